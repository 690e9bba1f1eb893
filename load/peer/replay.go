package main

// Replay: the peer serves configurations captured from another control plane, byte for
// byte, so that a bench can time a proxy applying a change when the control plane does no
// work beyond handing prepared snapshots over.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// captureTimeout bounds one capture: connecting, and every type's first response.
const captureTimeout = 20 * time.Second

// maxNodeBytes bounds the node a capture request carries.
const maxNodeBytes = 64 << 10

// The types a capture collects, and so the types a replayed set holds.
var capturedTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// configSet is one captured configuration: the resources of each type.
type configSet map[resource.Type][]types.Resource

type replay struct {
	mu    sync.Mutex
	cache cachev3.SnapshotCache
	sets  map[string]configSet
}

func newReplay(cache cachev3.SnapshotCache) *replay {
	return &replay{cache: cache, sets: map[string]configSet{}}
}

// capture: POST /replay/capture?xds=HOST:PORT&as=NAME, with an Envoy node as JSON in the
// body, subscribes to the control plane at xds as that node (SotW ADS, plaintext), takes
// every cluster and listener and the assignments and route configurations they name, and
// keeps them as set NAME.
func (r *replay) capture(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "use POST", http.StatusBadRequest)
		return
	}
	addr, name := req.URL.Query().Get("xds"), req.URL.Query().Get("as")
	if addr == "" || name == "" {
		http.Error(w, "xds and as are required", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxNodeBytes+1))
	if err != nil || len(body) > maxNodeBytes {
		http.Error(w, fmt.Sprintf("the node must be JSON of at most %d bytes", maxNodeBytes), http.StatusBadRequest)
		return
	}
	node := &corev3.Node{}
	if err := protojson.Unmarshal(body, node); err != nil {
		http.Error(w, "the body is not an Envoy node: "+err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), captureTimeout)
	defer cancel()
	set, err := captureSet(ctx, addr, node)
	if err != nil {
		http.Error(w, "capture failed: "+err.Error(), http.StatusBadGateway)
		return
	}
	r.mu.Lock()
	r.sets[name] = set
	r.mu.Unlock()
	fmt.Fprintf(w, "ok %s: %d clusters, %d assignments, %d listeners, %d route configurations\n", name,
		len(set[resource.ClusterType]), len(set[resource.EndpointType]),
		len(set[resource.ListenerType]), len(set[resource.RouteType]))
}

// serve: POST /replay/serve?set=NAME makes set NAME the configuration every node gets. Each
// type's version is a digest of its resources, so a switch sends a proxy only the types that
// differ between the sets. 200 once the cache holds it (and has answered waiting streams).
func (r *replay) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "use POST", http.StatusBadRequest)
		return
	}
	name := req.URL.Query().Get("set")
	r.mu.Lock()
	defer r.mu.Unlock()
	set, ok := r.sets[name]
	if !ok {
		http.Error(w, fmt.Sprintf("no set %q has been captured", name), http.StatusBadRequest)
		return
	}
	snap, err := cachev3.NewSnapshot("replay", set)
	if err != nil {
		http.Error(w, "snapshot: "+err.Error(), http.StatusInternalServerError)
		return
	}
	for typeURL, items := range set {
		version, err := digest(items)
		if err != nil {
			http.Error(w, "digest: "+err.Error(), http.StatusInternalServerError)
			return
		}
		snap.Resources[cachev3.GetResponseType(typeURL)].Version = version
	}
	if err := r.cache.SetSnapshot(req.Context(), oneNode{}.ID(nil), snap); err != nil {
		http.Error(w, "cache update failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, "ok serving", name)
}

// digest is a version for a type's resources: the same resources, the same version.
func digest(items []types.Resource) (string, error) {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b types.Resource) int {
		return cmp.Compare(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
	})
	h := sha256.New()
	for _, item := range sorted {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(item)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// captureSet subscribes to addr as node and returns what it serves once every captured type
// has been answered with every name asked for. Resources are kept as received: fields this
// peer's API version does not know stay in them, and go back out unchanged.
func captureSet(ctx context.Context, addr string, node *corev3.Node) (configSet, error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	sub := subscription{stream: stream, node: node, acked: map[string][2]string{}, asked: map[string][]string{}}
	for _, typeURL := range []string{resource.ClusterType, resource.ListenerType} {
		if err := sub.ask(typeURL, nil); err != nil {
			return nil, err
		}
	}
	set := configSet{}
	for !sub.complete(set) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("receiving: %w", err)
		}
		items := make([]types.Resource, 0, len(resp.GetResources()))
		for _, any := range resp.GetResources() {
			m, err := any.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("a %s resource: %w", resp.GetTypeUrl(), err)
			}
			items = append(items, m)
		}
		typeURL := resp.GetTypeUrl()
		if !slices.Contains(capturedTypes, typeURL) {
			continue
		}
		set[typeURL] = items
		sub.acked[typeURL] = [2]string{resp.GetVersionInfo(), resp.GetNonce()}
		if err := sub.ask(typeURL, sub.asked[typeURL]); err != nil {
			return nil, err
		}
		switch typeURL {
		case resource.ClusterType:
			err = sub.ask(resource.EndpointType, assignmentNames(items))
		case resource.ListenerType:
			err = sub.ask(resource.RouteType, routeNames(items))
		}
		if err != nil {
			return nil, err
		}
	}
	return set, nil
}

// subscription is the client side of one SotW ADS stream.
type subscription struct {
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	// Per type, the version and nonce last received (to ACK), and the names asked for.
	acked map[string][2]string
	asked map[string][]string
}

func (s *subscription) ask(typeURL string, names []string) error {
	s.asked[typeURL] = names
	last := s.acked[typeURL]
	return s.stream.Send(&discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: last[0], ResponseNonce: last[1],
	})
}

// complete: clusters and listeners answered, and assignments and route configurations
// answered with every name asked for (none asked: nothing to wait for).
func (s *subscription) complete(set configSet) bool {
	for _, typeURL := range capturedTypes {
		names, asked := s.asked[typeURL]
		if typeURL == resource.ClusterType || typeURL == resource.ListenerType {
			if _, got := set[typeURL]; !got {
				return false
			}
			continue
		}
		if !asked {
			return false
		}
		have := map[string]bool{}
		for _, item := range set[typeURL] {
			have[cachev3.GetResourceName(item)] = true
		}
		for _, name := range names {
			if !have[name] {
				return false
			}
		}
	}
	return true
}

// assignmentNames: the load assignments the EDS clusters read.
func assignmentNames(clusters []types.Resource) []string {
	var names []string
	for _, item := range clusters {
		c, ok := item.(*clusterv3.Cluster)
		if !ok || c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// routeNames: the route configurations the listeners' HTTP connection managers read by RDS.
func routeNames(listeners []types.Resource) []string {
	hcmType := "type.googleapis.com/" + string((&hcmv3.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName())
	var names []string
	for _, item := range listeners {
		l, ok := item.(*listenerv3.Listener)
		if !ok {
			continue
		}
		chains := slices.Clone(l.GetFilterChains())
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains, l.GetDefaultFilterChain())
		}
		for _, chain := range chains {
			for _, filter := range chain.GetFilters() {
				config := filter.GetTypedConfig()
				if config.GetTypeUrl() != hcmType {
					continue
				}
				hcm := &hcmv3.HttpConnectionManager{}
				if err := config.UnmarshalTo(hcm); err != nil {
					continue
				}
				if name := hcm.GetRds().GetRouteConfigName(); name != "" {
					names = append(names, name)
				}
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// errNoSnapshotCache: replay needs the snapshot cache.
var errNoSnapshotCache = errors.New("replay needs --cache snapshot")
