package agent

import (
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

// Linux input events (linux/input.h, input-event-codes.h).
const (
	inputEventSize = 24 // struct input_event on 64-bit: timeval, type, code, value
	evKey          = 0x01
	keyPower       = 116
)

// watchPowerButton calls press when the ACPI power button is pressed:
// QMP's system_powerdown presses it, and a guest with no acpid would
// ignore it. It needs the button and evdev drivers; without them it logs
// and returns.
func watchPowerButton(log zerolog.Logger, press func(reason string)) {
	names, _ := filepath.Glob("/sys/class/input/event*/device/name")
	found := false
	for _, n := range names {
		name, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(name)) != "Power Button" {
			continue
		}
		dev := filepath.Join("/dev/input", filepath.Base(filepath.Dir(filepath.Dir(n))))
		f, err := os.Open(dev)
		if err != nil {
			log.Warn().Err(err).Str("device", dev).Msg("cannot watch the power button")
			continue
		}
		found = true
		go readPowerButton(f, press)
	}
	if !found {
		log.Info().Msg("no power button: system_powerdown will not stop this guest")
	}
}

func readPowerButton(f *os.File, press func(string)) {
	defer f.Close()
	buf := make([]byte, inputEventSize)
	for {
		if _, err := io.ReadFull(f, buf); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		value := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			press("power button")
		}
	}
}
