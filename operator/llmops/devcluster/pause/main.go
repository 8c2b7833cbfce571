// Command pause is PID 1 of every pod sandbox on the local cluster's real node, in
// place of registry.k8s.io/pause (there is no registry to pull it from). Like the
// original it holds the pod's namespaces open, reaps the zombies re-parented to it,
// and exits 0 on SIGTERM or SIGINT. Standard library only; built static.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "1.0"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("llmops pause", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "warning: pause should be the first process")
	}
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

// reap collects every exited child; SIGCHLDs coalesce, so one signal may stand for several.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
