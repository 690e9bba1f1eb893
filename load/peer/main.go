// Command peer is the go-control-plane bench server capstan is measured against.
// It serves a synthetic mesh over SotW and Delta ADS and takes changes over a
// small HTTP control API; see README.md for the contract.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

func main() {
	adsAddr := flag.String("ads", "127.0.0.1:18000", "gRPC listen address for ADS (SotW and Delta)")
	controlAddr := flag.String("control", "127.0.0.1:18001", "HTTP listen address for the control API")
	services := flag.Int("services", 10, "number of services (clusters, assignments, virtual hosts)")
	endpoints := flag.Int("endpoints", 3, "endpoints per service")
	cacheKind := flag.String("cache", "snapshot", "snapshot | linear")
	flag.Parse()
	if *services < 0 || *endpoints < 0 {
		log.Fatal("--services and --endpoints must be >= 0")
	}

	m := newMesh(*services, *endpoints)
	var b backend
	switch *cacheKind {
	case "snapshot":
		sb, err := newSnapshotBackend(m)
		if err != nil {
			log.Fatalf("initial snapshot: %v", err)
		}
		b = sb
	case "linear":
		b = newLinearBackend(m)
	default:
		log.Fatalf("--cache must be snapshot or linear, not %q", *cacheKind)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var sotwStreams, deltaStreams atomic.Int64
	callbacks := serverv3.CallbackFuncs{
		StreamOpenFunc:        func(context.Context, int64, string) error { sotwStreams.Add(1); return nil },
		StreamClosedFunc:      func(int64, *corev3.Node) { sotwStreams.Add(-1) },
		DeltaStreamOpenFunc:   func(context.Context, int64, string) error { deltaStreams.Add(1); return nil },
		DeltaStreamClosedFunc: func(int64, *corev3.Node) { deltaStreams.Add(-1) },
	}
	xds := serverv3.NewServer(ctx, b.cache(), callbacks)

	grpcServer := grpc.NewServer(
		// One stream per proxy, possibly all on one connection from a load generator.
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Tolerate clients that ping often (the default policy closes the connection
		// of a client pinging more than every 5 minutes).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)

	adsListener, err := net.Listen("tcp", *adsAddr)
	if err != nil {
		log.Fatalf("ads listen: %v", err)
	}
	controlListener, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("control listen: %v", err)
	}

	ctl := &control{b: b, m: m}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ready cache=%s sotw_streams=%d delta_streams=%d\n", *cacheKind, sotwStreams.Load(), deltaStreams.Load())
	})
	mux.HandleFunc("/endpoint", ctl.change(ctl.endpoint))
	mux.HandleFunc("/cluster", ctl.change(ctl.cluster))
	if sb, ok := b.(*snapshotBackend); ok {
		r := newReplay(sb.snapshots)
		mux.HandleFunc("/replay/capture", r.capture)
		mux.HandleFunc("/replay/serve", r.serve)
	} else {
		refuse := func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, errNoSnapshotCache.Error(), http.StatusBadRequest)
		}
		mux.HandleFunc("/replay/", refuse)
	}
	httpServer := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	go func() {
		if err := grpcServer.Serve(adsListener); err != nil {
			log.Fatalf("ads serve: %v", err)
		}
	}()
	go func() {
		if err := httpServer.Serve(controlListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatalf("control serve: %v", err)
		}
	}()
	log.Printf("peer: go-control-plane %s cache, %d services x %d endpoints, ads=%s control=%s",
		*cacheKind, *services, *endpoints, adsListener.Addr(), controlListener.Addr())

	<-ctx.Done()
	log.Print("peer: shutting down")
	_ = httpServer.Close()
	grpcServer.Stop() // ADS streams never end on their own; don't wait for them
}

// control serves the change half of the bench contract.
type control struct {
	mu sync.Mutex // one change at a time
	b  backend
	m  *mesh
}

// change wraps a change handler: POST only, one change at a time, an error is a 400.
func (c *control) change(apply func(q url.Values) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "use POST", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		msg, err := apply(r.URL.Query())
		c.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, msg)
	}
}

// endpoint: POST /endpoint?service=I&port=P moves endpoint 0 of svc-I to port P.
func (c *control) endpoint(q url.Values) (string, error) {
	i, err := strconv.Atoi(q.Get("service"))
	if err != nil || i < 0 || i >= c.m.services {
		return "", fmt.Errorf("service must be an integer in [0, %d), got %q", c.m.services, q.Get("service"))
	}
	port, err := strconv.ParseUint(q.Get("port"), 10, 16)
	if err != nil || port == 0 {
		return "", fmt.Errorf("port must be an integer in [1, 65535], got %q", q.Get("port"))
	}
	if c.m.endpoints == 0 {
		return "", errors.New("services have no endpoints (--endpoints 0)")
	}
	if err := c.b.setAssignment(serviceName(i), makeAssignment(i, c.m.endpoints, uint32(port))); err != nil {
		return "", fmt.Errorf("cache update failed: %w", err)
	}
	return fmt.Sprintf("ok %s endpoint 0 port %d", serviceName(i), port), nil
}

// cluster: POST /cluster?name=NAME adds (or, like capstan's bench server, replaces) EDS
// cluster NAME. A new name also gets an empty assignment so the cluster can finish warming.
func (c *control) cluster(q url.Values) (string, error) {
	name := q.Get("name")
	if name == "" {
		return "", errors.New("name is required")
	}
	var cla types.Resource // nil: keep the assignment the name already has
	if _, exists := c.m.loads[name]; !exists {
		cla = emptyAssignment(name)
	}
	if err := c.b.addCluster(name, makeCluster(name), cla); err != nil {
		return "", fmt.Errorf("cache update failed: %w", err)
	}
	return "ok cluster " + name, nil
}
