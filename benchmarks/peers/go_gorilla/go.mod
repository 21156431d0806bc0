module trio_rt/benchmarks/peers/go_gorilla

go 1.21

require (
	github.com/gorilla/websocket v1.5.3
	golang.org/x/sys v0.25.0
)
