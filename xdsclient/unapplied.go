package xdsclient

import (
	"regexp"
	"strings"

	"google.golang.org/protobuf/types/known/anypb"

	"mesh/xdsclient/internal/lite"
	"mesh/xdsclient/internal/lite/registry"
)

// The fields mesh applies, or checks and rejects, per resource type, as
// proto field paths without indexes. A listed path covers everything
// below it; a path that is only the prefix of listed ones is walked into.
// Every other field a resource sets is reported as not applied, so that
// nothing a control plane sends is dropped without a trace. Fields that
// only name things (stat_prefix, a chain's or a filter's name) have no
// behaviour to apply and are listed as applied.
var (
	hcmApplied = fields(
		"stat_prefix", "rds", "http_filters", "common_http_protocol_options.max_stream_duration",
		"xff_num_trusted_hops", "original_ip_detection_extensions", "scoped_routes",
		// Path normalization before authorization (Listener.PathNormalization).
		"normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
	)
	retryApplied = fields(
		"retry_on", "num_retries", "retriable_status_codes", "retry_back_off", "per_try_timeout",
		// Reported with their own reason by the decoder.
		"retry_host_predicate", "host_selection_retry_max_attempts", "retry_priority", "per_try_idle_timeout",
		"rate_limited_retry_back_off", "retriable_headers", "retriable_request_headers", "retry_options_predicates",
	)
	routeConfigApplied = merge(fields(
		"name", "virtual_hosts.name", "virtual_hosts.domains", "virtual_hosts.typed_per_filter_config",
		"virtual_hosts.routes.name", "virtual_hosts.routes.match.prefix", "virtual_hosts.routes.match.path",
		"virtual_hosts.routes.match.safe_regex", "virtual_hosts.routes.match.case_sensitive",
		"virtual_hosts.routes.match.headers", "virtual_hosts.routes.match.runtime_fraction.default_value",
		"virtual_hosts.routes.match.query_parameters", "virtual_hosts.routes.match.path_separated_prefix",
		"virtual_hosts.routes.match.path_match_policy", "virtual_hosts.routes.match.connect_matcher",
		"virtual_hosts.routes.typed_per_filter_config", "virtual_hosts.routes.non_forwarding_action",
		// Skipped with their own reason by the decoder.
		"virtual_hosts.routes.redirect", "virtual_hosts.routes.direct_response", "virtual_hosts.routes.filter_action",
		"virtual_hosts.routes.route.cluster", "virtual_hosts.routes.route.weighted_clusters.clusters.name",
		"virtual_hosts.routes.route.weighted_clusters.clusters.weight", "virtual_hosts.routes.route.cluster_header",
		"virtual_hosts.routes.route.cluster_specifier_plugin", "virtual_hosts.routes.route.max_stream_duration.max_stream_duration",
		"virtual_hosts.routes.route.max_stream_duration.grpc_timeout_header_max", "virtual_hosts.routes.route.hash_policy",
	), under("virtual_hosts.retry_policy", retryApplied), under("virtual_hosts.routes.route.retry_policy", retryApplied))
	validationApplied = fields(
		"ca_certificate_provider_instance", "trusted_ca", "match_subject_alt_names", "match_typed_subject_alt_names",
	)
	commonTLSApplied = merge(fields(
		"tls_certificates", "tls_certificate_provider_instance", "tls_certificate_certificate_provider_instance",
		"tls_certificate_sds_secret_configs", "validation_context_sds_secret_config",
		"validation_context_certificate_provider_instance",
		"combined_validation_context.validation_context_certificate_provider_instance",
		"combined_validation_context.validation_context_sds_secret_config",
	), under("validation_context", validationApplied), under("combined_validation_context.default_validation_context", validationApplied))
	hcmWithRoutesApplied = merge(hcmApplied, under("route_config", routeConfigApplied))
	upstreamTLSApplied   = merge(fields("sni"), under("common_tls_context", commonTLSApplied))
	downstreamTLSApplied = merge(fields("require_client_certificate"), under("common_tls_context", commonTLSApplied))
	filterChainApplied   = merge(fields(
		"name", "filter_chain_match.destination_port", "filter_chain_match.prefix_ranges", "filter_chain_match.source_type",
		"filter_chain_match.source_prefix_ranges", "filter_chain_match.source_ports", "filter_chain_match.transport_protocol",
		"filter_chain_match.application_protocols", "filters.name", "transport_socket.name",
	), under("filters.typed_config", hcmWithRoutesApplied), under("transport_socket.typed_config", downstreamTLSApplied))
	listenerApplied = merge(fields(
		"name", "address.socket_address.address", "address.socket_address.port_value", "listener_filters", "use_original_dst",
	), under("api_listener.api_listener", hcmWithRoutesApplied), under("filter_chains", filterChainApplied), under("default_filter_chain", filterChainApplied))
	clusterApplied = fields(
		"name", "type", "eds_cluster_config", "load_assignment", "lb_policy", "load_balancing_policy", "cluster_type",
		"least_request_lb_config.choice_count", "ring_hash_lb_config.minimum_ring_size", "ring_hash_lb_config.maximum_ring_size",
		"ring_hash_lb_config.hash_function", "circuit_breakers.thresholds.priority", "circuit_breakers.thresholds.max_requests",
		"outlier_detection.interval", "outlier_detection.base_ejection_time", "outlier_detection.max_ejection_time",
		"outlier_detection.max_ejection_percent", "outlier_detection.consecutive_5xx", "outlier_detection.enforcing_consecutive_5xx",
		"outlier_detection.enforcing_success_rate", "outlier_detection.success_rate_stdev_factor",
		"outlier_detection.success_rate_minimum_hosts", "outlier_detection.success_rate_request_volume",
		"outlier_detection.enforcing_failure_percentage", "outlier_detection.failure_percentage_threshold",
		"outlier_detection.failure_percentage_minimum_hosts", "outlier_detection.failure_percentage_request_volume",
		"transport_socket.name", "lrs_server",
	)
	endpointsApplied = fields(
		"cluster_name", "endpoints.locality", "endpoints.load_balancing_weight", "endpoints.priority",
		"endpoints.lb_endpoints.endpoint.address.socket_address.address", "endpoints.lb_endpoints.endpoint.address.socket_address.port_value",
		"endpoints.lb_endpoints.health_status", "endpoints.lb_endpoints.load_balancing_weight", "policy.drop_overloads",
	)
)

// appliedFields is a tree of applied field paths: a field name maps to
// the applied fields below it, or to nil when the field is applied whole.
// A message that appears under several fields (a TLS context, an HTTP
// connection manager) is one subtree shared by all of them, so the table
// holds each field name once rather than every path spelled out: it is
// read on every xDS response and kept for the life of the process.
// Trees are never changed once built; merge copies what it combines.
type appliedFields map[string]appliedFields

// fields returns the tree of the dotted paths given, each applied whole.
func fields(paths ...string) appliedFields {
	trees := make([]appliedFields, len(paths))
	for i, p := range paths {
		trees[i] = under(p, nil)
	}
	return merge(trees...)
}

// under returns the tree holding only the dotted path prefix, with tree
// below its last field (nil: the field is applied whole).
func under(prefix string, tree appliedFields) appliedFields {
	parent, name, nested := strings.Cut(prefix, ".")
	if !nested {
		return appliedFields{prefix: tree}
	}
	return appliedFields{parent: under(name, tree)}
}

// merge returns the union of trees, leaving them unchanged. A field applied
// whole in any of them is applied whole in the union.
func merge(trees ...appliedFields) appliedFields {
	out := appliedFields{}
	for _, t := range trees {
		for name, sub := range t {
			prev, seen := out[name]
			switch {
			case !seen:
				out[name] = sub
			case prev == nil || sub == nil:
				out[name] = nil
			default:
				out[name] = merge(prev, sub)
			}
		}
	}
	return out
}

// appliedByKind is the tree of every resource type mesh audits.
var appliedByKind = [numKinds]appliedFields{
	kindListener:    listenerApplied,
	kindRouteConfig: routeConfigApplied,
	kindCluster:     merge(clusterApplied, under("transport_socket.typed_config", upstreamTLSApplied)),
	kindEndpoints:   endpointsApplied,
}

var indexes = regexp.MustCompile(`\[[^\]]*\]`)

// reportUnapplied returns "path: not applied" for each field m sets that
// mesh neither applies nor already reported in ignored (whose paths carry
// indexes), in field order.
func reportUnapplied(kind resourceKind, m lite.Message, ignored []string) []string {
	applied := appliedByKind[kind]
	if applied == nil {
		return nil
	}
	reported := map[string]bool{}
	for _, ig := range ignored {
		path, _, _ := strings.Cut(ig, ": ")
		reported[indexes.ReplaceAllString(path, "")] = true
	}
	var out []string
	seen := map[string]bool{}
	var walk func(m lite.Message, prefix string, applied appliedFields)
	walk = func(m lite.Message, prefix string, applied appliedFields) {
		m.RangeSet(func(f lite.Field) bool {
			path := f.Name
			if prefix != "" {
				path = prefix + "." + path
			}
			below, listed := applied[f.Name]
			switch {
			case (listed && below == nil) || reported[path]:
			case listed && len(f.Messages) > 0 && !f.IsMap:
				for _, v := range f.Messages {
					switch v := v.(type) {
					case *anypb.Any:
						// A typed_config mesh decodes: walk what it holds.
						if inner := registry.New(v.GetTypeUrl()); inner != nil && lite.Unmarshal(v.GetValue(), inner) == nil {
							walk(inner, path, below)
						}
					case lite.Message:
						walk(v, path, below)
					}
				}
			default:
				if !seen[path] {
					seen[path] = true
					out = append(out, path+": not applied")
				}
			}
			return true
		})
	}
	walk(m, "", applied)
	return out
}
