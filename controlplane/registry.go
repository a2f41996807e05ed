package controlplane

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

// endpoint is one instance of a service.
type endpoint struct {
	ip             string
	ports          map[uint32]uint32 // service port -> port the instance serves on
	labels         map[string]string
	namespace      string
	serviceAccount string
	weight         uint32
	// locality is Istio's "region/zone/subzone" ("" when unknown).
	locality string
	// inMesh is false for ServiceEntry endpoints not labelled as Istio
	// workloads: auto-mTLS leaves them plaintext, as Istio does.
	inMesh bool
}

// service is one host with its ports and instances.
type service struct {
	host      string
	namespace string
	ports     []uint32
	endpoints []endpoint
	sans      map[string]bool
}

func (s *service) hasPort(p uint32) bool { return slices.Contains(s.ports, p) }

func (s *service) addPort(p uint32) {
	if !s.hasPort(p) {
		s.ports = append(s.ports, p)
		slices.Sort(s.ports)
	}
}

// registry is an immutable view of all known services, rebuilt on change.
type registry struct {
	services map[string]*service
}

func (r *registry) get(host string) *service {
	if r == nil {
		return nil
	}
	return r.services[host]
}

func (r *registry) service(host, namespace string) *service {
	s := r.services[host]
	if s == nil {
		s = &service{host: host, namespace: namespace, sans: map[string]bool{}}
		r.services[host] = s
	}
	return s
}

func (r *registry) hosts() []string { return sortedKeys(r.services) }

// resolve turns a config or request host name into a known FQDN the way
// Kubernetes DNS search paths would: "payments" in namespace ns becomes
// payments.ns.svc.cluster.local, "payments.ns" becomes
// payments.ns.svc.cluster.local. It returns the best guess and whether the
// host is known.
func (r *registry) resolve(name, namespace string) (string, bool) {
	if r.get(name) != nil {
		return name, true
	}
	var candidates []string
	switch strings.Count(name, ".") {
	case 0:
		candidates = []string{name + "." + namespace + "." + clusterDomain}
	case 1:
		candidates = []string{name + "." + clusterDomain}
	case 2:
		if strings.HasSuffix(name, ".svc") {
			candidates = []string{name + ".cluster.local"}
		}
	}
	for _, c := range candidates {
		if r.get(c) != nil {
			return c, true
		}
	}
	if len(candidates) > 0 {
		return candidates[0], false
	}
	return name, false
}

// buildRegistry merges declared workloads, connected nodes and
// ServiceEntry/WorkloadEntry configuration.
func buildRegistry(td string, declared map[string]Workload, nodes []*nodeInfo, cfg configSet) *registry {
	r := &registry{services: map[string]*service{}}
	spiffe := func(ns, sa string) string { return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa }
	for _, key := range sortedKeys(declared) {
		w := declared[key]
		if w.host() == "" {
			continue
		}
		svc := r.service(w.host(), w.Namespace)
		svc.addPort(w.Port)
		svc.sans[spiffe(w.Namespace, w.ServiceAccount)] = true
	}
	for _, n := range nodes {
		if n.serviceHost == "" {
			continue
		}
		svc := r.service(n.serviceHost, n.namespace)
		svc.addPort(n.servicePort)
		svc.sans[spiffe(n.namespace, n.serviceAccount)] = true
		for _, addr := range n.addresses() {
			ip, port, err := parseHostPort(addr)
			if err != nil {
				continue
			}
			if u := net.ParseIP(ip); u != nil && u.IsUnspecified() {
				ip = "127.0.0.1" // a wildcard listener is reachable on loopback here
			}
			svc.endpoints = append(svc.endpoints, endpoint{
				ip: ip, ports: map[uint32]uint32{n.servicePort: port}, labels: n.labels,
				namespace: n.namespace, serviceAccount: n.serviceAccount, weight: 1, inMesh: true,
			})
		}
	}
	entries := cfg.sorted(KindWorkloadEntry)
	for _, o := range cfg.sorted(KindServiceEntry) {
		se := o.spec.(*networking.ServiceEntry)
		ns := o.key.namespace
		var eps []endpoint
		toEndpoint := func(we *networking.WorkloadEntry, weNamespace string) endpoint {
			ports := map[uint32]uint32{}
			for _, p := range se.GetPorts() {
				target := p.GetNumber()
				if p.GetTargetPort() != 0 {
					target = p.GetTargetPort()
				}
				if named, ok := we.GetPorts()[p.GetName()]; ok && named != 0 {
					target = named
				}
				ports[p.GetNumber()] = target
			}
			w := we.GetWeight()
			if w == 0 {
				w = 1
			}
			sa := we.GetServiceAccount()
			if sa == "" {
				sa = "default"
			}
			return endpoint{
				ip: we.GetAddress(), ports: ports, labels: we.GetLabels(), namespace: weNamespace,
				serviceAccount: sa, weight: w, inMesh: we.GetLabels()["security.istio.io/tlsMode"] == "istio",
				locality: we.GetLocality(),
			}
		}
		for _, we := range se.GetEndpoints() {
			eps = append(eps, toEndpoint(we, ns))
		}
		if sel := se.GetWorkloadSelector(); sel != nil {
			for _, wo := range entries {
				we := wo.spec.(*networking.WorkloadEntry)
				if wo.key.namespace == ns && labelsMatch(sel.GetLabels(), we.GetLabels()) {
					eps = append(eps, toEndpoint(we, ns))
				}
			}
		}
		for _, h := range se.GetHosts() {
			svc := r.service(h, ns)
			for _, p := range se.GetPorts() {
				svc.addPort(p.GetNumber())
			}
			svc.endpoints = append(svc.endpoints, eps...)
			for _, e := range eps {
				if e.inMesh {
					svc.sans[spiffe(e.namespace, e.serviceAccount)] = true
				}
			}
			for _, san := range se.GetSubjectAltNames() {
				svc.sans[san] = true
			}
		}
	}
	for _, svc := range r.services {
		sort.SliceStable(svc.endpoints, func(i, j int) bool { return svc.endpoints[i].ip < svc.endpoints[j].ip })
	}
	return r
}

// labelsMatch reports whether every selector label is present in labels.
func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// findDestinationRule returns the DestinationRule for host, oldest name first.
func findDestinationRule(cfg configSet, reg *registry, host string) *networking.DestinationRule {
	for _, o := range cfg.sorted(KindDestinationRule) {
		dr := o.spec.(*networking.DestinationRule)
		if h, _ := reg.resolve(dr.GetHost(), o.key.namespace); h == host {
			return dr
		}
	}
	return nil
}

// findVirtualService returns the VirtualService routing host, if any.
func findVirtualService(cfg configSet, reg *registry, host string) (*object, *networking.VirtualService) {
	for _, o := range cfg.sorted(KindVirtualService) {
		vs := o.spec.(*networking.VirtualService)
		for _, h := range vs.GetHosts() {
			if fq, _ := reg.resolve(h, o.key.namespace); fq == host {
				return o, vs
			}
		}
	}
	return nil, nil
}

// mtlsMode is the effective PeerAuthentication mode of a workload:
// selector-matched policy, else namespace-wide, else mesh-wide (root
// namespace), else PERMISSIVE. UNSET inherits from the next level.
func mtlsMode(cfg configSet, namespace string, labels map[string]string) security.PeerAuthentication_MutualTLS_Mode {
	var selected, nsWide, meshWide security.PeerAuthentication_MutualTLS_Mode
	for _, o := range cfg.sorted(KindPeerAuthentication) {
		pa := o.spec.(*security.PeerAuthentication)
		mode := pa.GetMtls().GetMode()
		if mode == security.PeerAuthentication_MutualTLS_UNSET {
			continue
		}
		sel := pa.GetSelector().GetMatchLabels()
		switch {
		case o.key.namespace == namespace && len(sel) > 0:
			if selected == 0 && labelsMatch(sel, labels) {
				selected = mode
			}
		case o.key.namespace == namespace:
			if nsWide == 0 {
				nsWide = mode
			}
		case o.key.namespace == rootNamespace && len(sel) == 0:
			if meshWide == 0 {
				meshWide = mode
			}
		}
	}
	for _, m := range []security.PeerAuthentication_MutualTLS_Mode{selected, nsWide, meshWide} {
		if m != security.PeerAuthentication_MutualTLS_UNSET {
			return m
		}
	}
	return security.PeerAuthentication_MutualTLS_PERMISSIVE
}

// validateConfig checks cfg as a whole. Objects in changed are also checked
// against the registry (destination hosts must be known); objects that were
// already accepted are not, so that a workload going away does not block
// unrelated updates.
func validateConfig(cfg configSet, changed map[objectKey]bool, reg *registry) error {
	named := configNamedHosts(cfg, reg)
	for _, kind := range []string{KindServiceEntry, KindWorkloadEntry, KindDestinationRule, KindPeerAuthentication, KindAuthorizationPolicy, KindVirtualService} {
		for _, o := range cfg.sorted(kind) {
			if err := validateObject(o, cfg, changed[o.key], reg, named); err != nil {
				return fmt.Errorf("%s %s/%s: %w", o.key.kind, o.key.namespace, o.key.name, err)
			}
		}
	}
	return nil
}

// configNamedHosts are the hosts that VirtualServices and DestinationRules
// are written for. Such a host counts as a service about to exist, so
// routing config may be applied before its workloads are declared, while a
// destination nobody mentions (a typo) is still rejected.
func configNamedHosts(cfg configSet, reg *registry) map[string]bool {
	named := map[string]bool{}
	for _, o := range cfg.sorted(KindVirtualService) {
		for _, h := range o.spec.(*networking.VirtualService).GetHosts() {
			fq, _ := reg.resolve(h, o.key.namespace)
			named[fq] = true
		}
	}
	for _, o := range cfg.sorted(KindDestinationRule) {
		fq, _ := reg.resolve(o.spec.(*networking.DestinationRule).GetHost(), o.key.namespace)
		named[fq] = true
	}
	return named
}

func validateObject(o *object, cfg configSet, checkHosts bool, reg *registry, named map[string]bool) error {
	switch spec := o.spec.(type) {
	case *networking.VirtualService:
		return validateVirtualService(o.key.namespace, spec, cfg, checkHosts, reg, named)
	case *networking.DestinationRule:
		return validateDestinationRule(spec)
	case *networking.ServiceEntry:
		return validateServiceEntry(spec)
	case *networking.WorkloadEntry:
		if net.ParseIP(spec.GetAddress()) == nil {
			return fmt.Errorf("spec.address: %q is not an IP address", spec.GetAddress())
		}
	case *security.PeerAuthentication:
		return nil
	case *security.AuthorizationPolicy:
		return validateAuthorizationPolicy(o.key.namespace, spec)
	}
	return nil
}

func validateVirtualService(ns string, vs *networking.VirtualService, cfg configSet, checkHosts bool, reg *registry, named map[string]bool) error {
	if len(vs.GetHosts()) == 0 {
		return fmt.Errorf("spec.hosts: at least one host required")
	}
	for i, h := range vs.GetHosts() {
		if h == "" || h == "*" || strings.ContainsAny(h, "*/: ") {
			return fmt.Errorf("spec.hosts[%d]: %q: want a service name", i, h)
		}
	}
	if len(vs.GetTcp()) > 0 || len(vs.GetTls()) > 0 {
		return fmt.Errorf("spec.tcp/spec.tls: not supported for proxyless gRPC (use spec.http)")
	}
	for i, hr := range vs.GetHttp() {
		p := fmt.Sprintf("spec.http[%d]", i)
		if hr.GetRedirect() != nil || hr.GetDirectResponse() != nil || hr.GetDelegate() != nil {
			return fmt.Errorf("%s: redirect, directResponse and delegate are not supported for proxyless gRPC", p)
		}
		for j, m := range hr.GetMatch() {
			mp := fmt.Sprintf("%s.match[%d]", p, j)
			if err := validateStringMatch(m.GetUri(), mp+".uri"); err != nil {
				return err
			}
			for _, name := range sortedKeys(m.GetHeaders()) {
				if err := validateStringMatch(m.GetHeaders()[name], fmt.Sprintf("%s.headers[%q]", mp, name)); err != nil {
					return err
				}
			}
		}
		routes := hr.GetRoute()
		if len(routes) == 0 {
			return fmt.Errorf("%s.route: at least one destination required", p)
		}
		var total int64
		for j, rd := range routes {
			rp := fmt.Sprintf("%s.route[%d]", p, j)
			if rd.GetWeight() < 0 {
				return fmt.Errorf("%s.weight: %d must not be negative", rp, rd.GetWeight())
			}
			total += int64(rd.GetWeight())
			d := rd.GetDestination()
			if d.GetHost() == "" {
				return fmt.Errorf("%s.destination.host: required", rp)
			}
			host, known := reg.resolve(d.GetHost(), ns)
			if checkHosts && !known && !named[host] {
				return fmt.Errorf("%s.destination.host: %q is not a known service", rp, d.GetHost())
			}
			if svc := reg.get(host); svc != nil {
				if port := d.GetPort().GetNumber(); port != 0 && !svc.hasPort(port) && checkHosts {
					return fmt.Errorf("%s.destination.port.number: service %s has no port %d", rp, host, port)
				}
			}
			if sub := d.GetSubset(); sub != "" {
				dr := findDestinationRule(cfg, reg, host)
				if dr == nil || !slices.ContainsFunc(dr.GetSubsets(), func(s *networking.Subset) bool { return s.GetName() == sub }) {
					return fmt.Errorf("%s.destination.subset: subset %q not defined", rp, sub)
				}
			}
		}
		if len(routes) > 1 && total == 0 {
			return fmt.Errorf("%s.route: at least one destination must have weight > 0", p)
		}
		if total > 1<<32-1 {
			return fmt.Errorf("%s.route: total weight %d too large", p, total)
		}
		if r := hr.GetRetries(); r != nil && r.GetAttempts() < 0 {
			return fmt.Errorf("%s.retries.attempts: %d must not be negative", p, r.GetAttempts())
		}
		if t := hr.GetTimeout(); t != nil && (t.CheckValid() != nil || t.AsDuration() < 0) {
			return fmt.Errorf("%s.timeout: invalid duration", p)
		}
		if f := hr.GetFault(); f != nil {
			if err := validateFault(f, p+".fault"); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateFault(f *networking.HTTPFaultInjection, p string) error {
	if d := f.GetDelay(); d != nil {
		if d.GetFixedDelay() == nil {
			return fmt.Errorf("%s.delay.fixedDelay: required", p)
		}
		if v := d.GetPercentage().GetValue(); v < 0 || v > 100 {
			return fmt.Errorf("%s.delay.percentage.value: %v must be in [0, 100]", p, v)
		}
	}
	if a := f.GetAbort(); a != nil {
		switch a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if s := a.GetHttpStatus(); s < 200 || s > 599 {
				return fmt.Errorf("%s.abort.httpStatus: %d must be in [200, 599]", p, s)
			}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			if _, ok := grpcStatusCode(a.GetGrpcStatus()); !ok {
				return fmt.Errorf("%s.abort.grpcStatus: unknown status %q", p, a.GetGrpcStatus())
			}
		default:
			return fmt.Errorf("%s.abort: httpStatus or grpcStatus required", p)
		}
		if v := a.GetPercentage().GetValue(); v < 0 || v > 100 {
			return fmt.Errorf("%s.abort.percentage.value: %v must be in [0, 100]", p, v)
		}
	}
	return nil
}

func validateStringMatch(m *networking.StringMatch, p string) error {
	if m == nil {
		return nil
	}
	switch v := m.GetMatchType().(type) {
	case *networking.StringMatch_Regex:
		if _, err := regexp.Compile(v.Regex); err != nil {
			return fmt.Errorf("%s.regex: %w", p, err)
		}
	case nil:
		return fmt.Errorf("%s: one of exact, prefix or regex required", p)
	}
	return nil
}

func validateDestinationRule(dr *networking.DestinationRule) error {
	if dr.GetHost() == "" {
		return fmt.Errorf("spec.host: required")
	}
	seen := map[string]bool{}
	for i, s := range dr.GetSubsets() {
		if s.GetName() == "" {
			return fmt.Errorf("spec.subsets[%d].name: required", i)
		}
		if seen[s.GetName()] {
			return fmt.Errorf("spec.subsets[%d].name: duplicate subset %q", i, s.GetName())
		}
		seen[s.GetName()] = true
		if err := validateTrafficPolicy(s.GetTrafficPolicy(), fmt.Sprintf("spec.subsets[%d].trafficPolicy", i)); err != nil {
			return err
		}
	}
	return validateTrafficPolicy(dr.GetTrafficPolicy(), "spec.trafficPolicy")
}

func validateTrafficPolicy(tp *networking.TrafficPolicy, p string) error {
	switch tp.GetTls().GetMode() {
	case networking.ClientTLSSettings_DISABLE, networking.ClientTLSSettings_ISTIO_MUTUAL:
	default:
		return fmt.Errorf("%s.tls.mode: %s not supported (want DISABLE or ISTIO_MUTUAL)", p, tp.GetTls().GetMode())
	}
	if od := tp.GetOutlierDetection(); od != nil {
		if v := od.GetMaxEjectionPercent(); v < 0 || v > 100 {
			return fmt.Errorf("%s.outlierDetection.maxEjectionPercent: %d must be in [0, 100]", p, v)
		}
	}
	return nil
}

func validateServiceEntry(se *networking.ServiceEntry) error {
	if len(se.GetHosts()) == 0 {
		return fmt.Errorf("spec.hosts: at least one host required")
	}
	for i, h := range se.GetHosts() {
		if h == "" || strings.ContainsAny(h, "*/: ") {
			return fmt.Errorf("spec.hosts[%d]: %q: want a host name", i, h)
		}
	}
	if len(se.GetPorts()) == 0 {
		return fmt.Errorf("spec.ports: at least one port required")
	}
	seen := map[uint32]bool{}
	for i, p := range se.GetPorts() {
		if p.GetNumber() == 0 || p.GetNumber() > 65535 {
			return fmt.Errorf("spec.ports[%d].number: %d must be 1-65535", i, p.GetNumber())
		}
		if seen[p.GetNumber()] {
			return fmt.Errorf("spec.ports[%d].number: duplicate port %d", i, p.GetNumber())
		}
		seen[p.GetNumber()] = true
		if p.GetTargetPort() > 65535 {
			return fmt.Errorf("spec.ports[%d].targetPort: %d must be 1-65535", i, p.GetTargetPort())
		}
	}
	for i, e := range se.GetEndpoints() {
		if net.ParseIP(e.GetAddress()) == nil {
			return fmt.Errorf("spec.endpoints[%d].address: %q is not an IP address", i, e.GetAddress())
		}
		for _, name := range sortedKeys(e.GetPorts()) {
			if v := e.GetPorts()[name]; v == 0 || v > 65535 {
				return fmt.Errorf("spec.endpoints[%d].ports[%q]: %d must be 1-65535", i, name, v)
			}
		}
	}
	return nil
}
