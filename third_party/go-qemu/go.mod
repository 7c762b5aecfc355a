module github.com/digitalocean/go-qemu

go 1.18

require golang.org/x/sys v0.50.0
