package api

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseMiB reads a size for a flag: a plain number of MiB, or with a
// binary suffix M/MiB or G/GiB (case-insensitive), as docker and lima
// take them.
func ParseMiB(flag, s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1
	for _, suf := range []struct {
		s string
		m int
	}{{"gib", 1024}, {"gb", 1024}, {"g", 1024}, {"mib", 1}, {"mb", 1}, {"m", 1}} {
		if strings.HasSuffix(t, suf.s) {
			t, mult = strings.TrimSuffix(t, suf.s), suf.m
			break
		}
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: want a size like 512M or 2G", flag, s)
	}
	return n * mult, nil
}
