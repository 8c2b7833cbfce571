// The local node's sandbox ("pause") image: `llmops-devcluster images build` compiles
// main.go here (CGO_ENABLED=0, standard library only) and commits it FROM scratch.
module llmops.dev/pause

go 1.22
