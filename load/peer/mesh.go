package main

// The synthetic mesh: builders for the four xDS resource kinds the bench serves.
// Every proto built here is treated as immutable once handed to a cache; a change
// builds a new object instead of editing one the cache may be serialising.

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	listenerName = "listener-0"
	routeName    = "route-0"
	servicePort  = 8080
)

func serviceName(i int) string { return fmt.Sprintf("svc-%d", i) }

// adsSource points a dependent resource (EDS of a cluster, RDS of a listener) at the ADS stream.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// makeCluster builds an EDS cluster whose endpoints come over ADS under the cluster's own name.
func makeCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
	}
}

func makeEndpoint(ip string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
		Endpoint: &endpointv3.Endpoint{Address: socketAddress(ip, port)},
	}}
}

// makeAssignment builds the ClusterLoadAssignment of svc-i: e endpoints
// 10.{(i/256)%256}.{i%256}.{j%256}:8080, except endpoint 0, which uses port0.
func makeAssignment(i, e int, port0 uint32) *endpointv3.ClusterLoadAssignment {
	lbs := make([]*endpointv3.LbEndpoint, e)
	for j := range lbs {
		port := uint32(servicePort)
		if j == 0 {
			port = port0
		}
		lbs[j] = makeEndpoint(fmt.Sprintf("10.%d.%d.%d", (i/256)%256, i%256, j%256), port)
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: serviceName(i),
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}

// emptyAssignment lets a cluster added through /cluster finish warming with no hosts.
func emptyAssignment(name string) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name}
}

func makeListener() *listenerv3.Listener {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		panic(err)
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "http",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	})
	if err != nil {
		panic(err)
	}
	return &listenerv3.Listener{
		Name:    listenerName,
		Address: socketAddress("0.0.0.0", 15001),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}}}},
	}
}

// makeRoute builds route-0 with one virtual host per service, "/" -> cluster svc-i.
func makeRoute(n int) *routev3.RouteConfiguration {
	hosts := make([]*routev3.VirtualHost, n)
	for i := range hosts {
		name := serviceName(i)
		hosts[i] = &routev3.VirtualHost{
			Name:    name,
			Domains: []string{name, fmt.Sprintf("%s:%d", name, servicePort)},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				}},
			}},
		}
	}
	return &routev3.RouteConfiguration{Name: routeName, VirtualHosts: hosts}
}

// mesh is the current desired state, keyed by resource name per kind.
type mesh struct {
	services  int // svc-0 .. svc-(services-1); /cluster names come on top
	endpoints int
	clusters  map[string]types.Resource
	loads     map[string]types.Resource
	listeners map[string]types.Resource
	routes    map[string]types.Resource
}

func newMesh(n, e int) *mesh {
	m := &mesh{
		services:  n,
		endpoints: e,
		clusters:  make(map[string]types.Resource, n),
		loads:     make(map[string]types.Resource, n),
		listeners: map[string]types.Resource{listenerName: makeListener()},
		routes:    map[string]types.Resource{routeName: makeRoute(n)},
	}
	for i := 0; i < n; i++ {
		m.clusters[serviceName(i)] = makeCluster(serviceName(i))
		m.loads[serviceName(i)] = makeAssignment(i, e, servicePort)
	}
	return m
}
