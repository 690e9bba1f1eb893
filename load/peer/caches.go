package main

// The two ways go-control-plane users hand config to its xDS server.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// backend owns the cache the xDS server reads and applies control-API changes to it.
// Calls are serialised by the caller; each returns once the cache holds the change.
type backend interface {
	cache() cachev3.Cache
	setAssignment(name string, cla types.Resource) error
	// addCluster stores cluster under name, and cla too unless it is nil.
	addCluster(name string, cluster, cla types.Resource) error
}

// ---- snapshot: one SnapshotCache (ADS mode), one snapshot shared by every node ----

// oneNode maps every Envoy node to the same snapshot key ("same config for all proxies").
type oneNode struct{}

func (oneNode) ID(*corev3.Node) string { return "all" }

type snapshotBackend struct {
	snapshots cachev3.SnapshotCache
	m         *mesh
	version   int
}

func newSnapshotBackend(m *mesh) (*snapshotBackend, error) {
	b := &snapshotBackend{snapshots: cachev3.NewSnapshotCache(true, oneNode{}, nil), m: m}
	return b, b.publish()
}

// publish replaces the snapshot with the whole current mesh under a new version
// (every type gets the new version, as with cachev3.NewSnapshot in go-control-plane's examples).
func (b *snapshotBackend) publish() error {
	b.version++
	snap, err := cachev3.NewSnapshot(strconv.Itoa(b.version), map[resource.Type][]types.Resource{
		resource.ClusterType:  slices.Collect(maps.Values(b.m.clusters)),
		resource.EndpointType: slices.Collect(maps.Values(b.m.loads)),
		resource.ListenerType: slices.Collect(maps.Values(b.m.listeners)),
		resource.RouteType:    slices.Collect(maps.Values(b.m.routes)),
	})
	if err != nil {
		return err
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("inconsistent snapshot: %w", err)
	}
	return b.snapshots.SetSnapshot(context.Background(), oneNode{}.ID(nil), snap)
}

func (b *snapshotBackend) cache() cachev3.Cache { return b.snapshots }

func (b *snapshotBackend) setAssignment(name string, cla types.Resource) error {
	b.m.loads[name] = cla
	return b.publish()
}

func (b *snapshotBackend) addCluster(name string, cluster, cla types.Resource) error {
	b.m.clusters[name] = cluster
	if cla != nil {
		b.m.loads[name] = cla
	}
	return b.publish()
}

// ---- linear: one LinearCache per type, muxed by type URL for ADS ----

type linearBackend struct {
	m        *mesh
	clusters *cachev3.LinearCache
	loads    *cachev3.LinearCache
	mux      *cachev3.MuxCache
}

func newLinearBackend(m *mesh) *linearBackend {
	linear := func(typeURL string, initial map[string]types.Resource) *cachev3.LinearCache {
		return cachev3.NewLinearCache(typeURL, cachev3.WithInitialResources(initial))
	}
	b := &linearBackend{
		m:        m,
		clusters: linear(resource.ClusterType, m.clusters),
		loads:    linear(resource.EndpointType, m.loads),
	}
	// The SotW and the Delta server each classify with their own function; both
	// must be set. A type with no cache makes CreateWatch fail, which ends the stream.
	b.mux = &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches: map[string]cachev3.Cache{
			resource.ClusterType:  b.clusters,
			resource.EndpointType: b.loads,
			resource.ListenerType: linear(resource.ListenerType, m.listeners),
			resource.RouteType:    linear(resource.RouteType, m.routes),
		},
	}
	return b
}

func (b *linearBackend) cache() cachev3.Cache { return b.mux }

func (b *linearBackend) setAssignment(name string, cla types.Resource) error {
	b.m.loads[name] = cla
	return b.loads.UpdateResource(name, cla)
}

// addCluster stores the assignment first so the cluster can warm as soon as Envoy asks for it.
func (b *linearBackend) addCluster(name string, cluster, cla types.Resource) error {
	b.m.clusters[name] = cluster
	if cla != nil {
		b.m.loads[name] = cla
		if err := b.loads.UpdateResource(name, cla); err != nil {
			return err
		}
	}
	return b.clusters.UpdateResource(name, cluster)
}
