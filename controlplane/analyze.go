package controlplane

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

// Severities of a Finding.
const (
	SeverityError   = "Error"
	SeverityWarning = "Warning"
	SeverityInfo    = "Info"
)

// Finding is one problem AnalyzeDir found: a code, a severity, the
// objects (or file) involved and what is wrong.
//
// # Experimental
type Finding struct {
	Code     string   `json:"code"`
	Severity string   `json:"severity"`
	Objects  []string `json:"objects"`
	Message  string   `json:"message"`
}

// AnalyzeDir checks a config directory as NewDaemon would load it,
// without a control plane: every file's schema errors (file, object and
// field path), then findings across the objects that parsed. It fails
// only when dir cannot be read.
//
// # Experimental
func AnalyzeDir(dir string) ([]Finding, error) {
	files, _, err := readConfigDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Finding
	var objs []*object
	file := map[*object]string{}
	canaryFile := map[string]string{} // host -> file of its Canary
	schemaError := func(f configFile, err error) Finding {
		return Finding{Code: "SchemaError", Severity: SeverityError, Objects: []string{f.name}, Message: strings.TrimPrefix(err.Error(), f.name+": ")}
	}
	for _, f := range files {
		parsed, canaries, err := parseConfigFiles([]configFile{f})
		if err != nil {
			// Every broken document, not only the first: each parsed
			// alone, the others blanked so that it keeps its index.
			docs := documentSeparator.Split(string(f.data), -1)
			var errs []Finding
			parsed, canaries = nil, map[string]Canary{}
			for i := range docs {
				alone := make([]string, len(docs))
				alone[i] = docs[i]
				one, c, err := parseConfigFiles([]configFile{{name: f.name, data: []byte(strings.Join(alone, "\n---\n"))}})
				if err != nil {
					errs = append(errs, schemaError(f, err))
					continue
				}
				parsed = append(parsed, one...)
				maps.Copy(canaries, c)
			}
			if len(errs) == 0 {
				// Each document is sound; together they are not (a
				// duplicate within the file).
				errs = append(errs, schemaError(f, err))
			}
			out = append(out, errs...)
		}
		for _, o := range parsed {
			file[o] = f.name
		}
		for _, host := range slices.Sorted(maps.Keys(canaries)) {
			c := canaries[host]
			if prev, dup := canaryFile[host]; dup {
				out = append(out, Finding{Code: "SchemaError", Severity: SeverityError, Objects: []string{f.name},
					Message: fmt.Sprintf("Canary %s/%s: host %s already has a Canary in %s", c.Namespace, c.Name, host, prev)})
				continue
			}
			canaryFile[host] = f.name
		}
		objs = append(objs, parsed...)
	}
	// What the control plane checks across objects when it loads them: an
	// object defined in two files, and each object against the others
	// (routes to subsets, matchers, faults, entries).
	cfg := configSet{}
	var kept []*object
	for _, o := range objs {
		if prev, dup := cfg[o.key]; dup {
			if file[prev] != file[o] { // a duplicate within a file is reported above
				out = append(out, Finding{Code: "SchemaError", Severity: SeverityError, Objects: []string{file[o]},
					Message: fmt.Sprintf("%s: also defined in %s", o.key, file[prev])})
			}
			continue
		}
		cfg[o.key] = o
		kept = append(kept, o)
	}
	found := analyzeObjects(kept)
	undefinedSubset := map[string]bool{}
	for _, f := range found {
		if f.Code == "UndefinedSubset" {
			undefinedSubset[f.Objects[0]] = true
		}
	}
	reg := buildRegistry("cluster.local", nil, nil, cfg)
	named := configNamedHosts(cfg, reg)
	for _, o := range kept {
		// Hosts are not checked: which hosts are served is known live only
		// (HostNotServed).
		err := validateObject(o, cfg, false, reg, named)
		if err == nil || undefinedSubset[o.key.String()] && strings.Contains(err.Error(), ".destination.subset:") {
			continue // none, or UndefinedSubset says it, with its code
		}
		out = append(out, Finding{Code: "SchemaError", Severity: SeverityError, Objects: []string{file[o]},
			Message: fmt.Sprintf("%s: %v", o.key, err)})
	}
	return append(out, found...), nil
}

func analyzeObjects(objs []*object) []Finding {
	var out []Finding
	subsets := map[string]map[string]bool{} // host -> defined subsets
	for _, o := range objs {
		if dr, ok := o.spec.(*networking.DestinationRule); ok {
			h := QualifyHost(dr.GetHost(), o.key.namespace)
			if subsets[h] == nil {
				subsets[h] = map[string]bool{}
			}
			for _, s := range dr.GetSubsets() {
				subsets[h][s.GetName()] = true
			}
		}
	}
	paByScope := map[string][]string{}
	for _, o := range objs {
		switch spec := o.spec.(type) {
		case *networking.VirtualService:
			for ri, r := range spec.GetHttp() {
				sum := 0
				var split []string
				for di, d := range r.GetRoute() {
					h := QualifyHost(d.GetDestination().GetHost(), o.key.namespace)
					if s := d.GetDestination().GetSubset(); s != "" && !subsets[h][s] {
						out = append(out, Finding{Code: "UndefinedSubset", Severity: SeverityError, Objects: []string{o.key.String()},
							Message: fmt.Sprintf("spec.http[%d].route[%d].destination.subset %q: no DestinationRule for %s defines it; the control plane rejects the configuration", ri, di, s, h)})
					}
					w := int(d.GetWeight())
					if len(r.GetRoute()) == 1 && w == 0 {
						w = 100
					}
					sum += w
					split = append(split, fmt.Sprintf("%s=%d", cmpOr(d.GetDestination().GetSubset(), h), w))
				}
				if len(r.GetRoute()) > 1 && sum != 100 && sum > 0 {
					var eff []string
					for di, d := range r.GetRoute() {
						eff = append(eff, fmt.Sprintf("%s=%.1f%%", cmpOr(d.GetDestination().GetSubset(), QualifyHost(d.GetDestination().GetHost(), o.key.namespace)), 100*float64(r.GetRoute()[di].GetWeight())/float64(sum)))
					}
					out = append(out, Finding{Code: "WeightsNotHundred", Severity: SeverityInfo, Objects: []string{o.key.String()},
						Message: fmt.Sprintf("spec.http[%d]: weights %s sum to %d, not 100; the effective split is %s", ri, strings.Join(split, " "), sum, strings.Join(eff, " "))})
				}
			}
		case *security.PeerAuthentication:
			if len(spec.GetSelector().GetMatchLabels()) == 0 {
				paByScope[o.key.namespace] = append(paByScope[o.key.namespace], o.key.String())
			}
		case *security.AuthorizationPolicy:
			if why := deniesEveryone(spec); why != "" {
				out = append(out, Finding{Code: "DeniesEveryCaller", Severity: SeverityWarning, Objects: []string{o.key.String()}, Message: why})
			}
		}
	}
	for _, ns := range slices.Sorted(maps.Keys(paByScope)) {
		if pas := paByScope[ns]; len(pas) > 1 {
			sort.Strings(pas)
			scope := "namespace " + ns
			if ns == rootNamespace {
				scope = "the mesh (" + rootNamespace + ")"
			}
			out = append(out, Finding{Code: "ConflictingPeerAuthentication", Severity: SeverityWarning, Objects: pas,
				Message: fmt.Sprintf("%d PeerAuthentications without a selector apply to %s; which one wins is undefined", len(pas), scope)})
		}
	}
	return out
}

// deniesEveryone says why p denies every caller of what it selects, if it
// does: a DENY rule that matches everything, or an ALLOW policy without
// rules (Istio's allow-nothing).
func deniesEveryone(p *security.AuthorizationPolicy) string {
	switch p.GetAction() {
	case security.AuthorizationPolicy_ALLOW:
		if len(p.GetRules()) == 0 {
			return "action ALLOW with no rules allows nothing: every caller is denied"
		}
	case security.AuthorizationPolicy_DENY:
		for i, r := range p.GetRules() {
			if len(r.GetFrom()) == 0 && len(r.GetTo()) == 0 && len(r.GetWhen()) == 0 {
				return fmt.Sprintf("spec.rules[%d] has no from, to or when: it matches, and denies, every caller", i)
			}
		}
	}
	return ""
}

// analyzeConfig is analyzeObjects plus what only the service registry
// knows: hosts nobody serves and selectors that select nobody.
func analyzeConfig(cfg configSet, reg *registry) []Finding {
	var objs []*object
	for _, kind := range []string{KindVirtualService, KindDestinationRule, KindPeerAuthentication, KindAuthorizationPolicy, KindServiceEntry, KindWorkloadEntry} {
		objs = append(objs, cfg.sorted(kind)...)
	}
	out := analyzeObjects(objs)
	var all []endpoint
	for _, h := range reg.hosts() {
		all = append(all, reg.get(h).endpoints...)
	}
	selectsSome := func(ns string, labels map[string]string) bool {
		for _, e := range all {
			if (ns == rootNamespace || e.namespace == ns) && labelsMatch(labels, e.labels) {
				return true
			}
		}
		return false
	}
	for _, o := range objs {
		name := []string{o.key.String()}
		switch spec := o.spec.(type) {
		case *networking.VirtualService:
			for i, h := range spec.GetHosts() {
				if _, ok := reg.resolve(h, o.key.namespace); !ok && h != "*" {
					out = append(out, Finding{Code: "HostNotServed", Severity: SeverityWarning, Objects: name,
						Message: fmt.Sprintf("spec.hosts[%d] %q: no service or workload serves it", i, h)})
				}
			}
		case *networking.DestinationRule:
			h, ok := reg.resolve(spec.GetHost(), o.key.namespace)
			if !ok {
				out = append(out, Finding{Code: "SelectsNothing", Severity: SeverityWarning, Objects: name,
					Message: fmt.Sprintf("spec.host %q: no service or workload serves it", spec.GetHost())})
				continue
			}
			for i, s := range spec.GetSubsets() {
				if !slices.ContainsFunc(reg.get(h).endpoints, func(e endpoint) bool { return labelsMatch(s.GetLabels(), e.labels) }) {
					out = append(out, Finding{Code: "SubsetSelectsNothing", Severity: SeverityWarning, Objects: name,
						Message: fmt.Sprintf("spec.subsets[%d] %q: labels %s select no workload of %s; calls routed there wait until their deadline", i, s.GetName(), formatLabels(s.GetLabels()), h)})
				}
			}
		case *security.PeerAuthentication:
			if l := spec.GetSelector().GetMatchLabels(); len(l) > 0 && !selectsSome(o.key.namespace, l) {
				out = append(out, Finding{Code: "SelectsNothing", Severity: SeverityWarning, Objects: name,
					Message: fmt.Sprintf("spec.selector.matchLabels %s: selects no workload", formatLabels(l))})
			}
		case *security.AuthorizationPolicy:
			if l := spec.GetSelector().GetMatchLabels(); len(l) > 0 && !selectsSome(o.key.namespace, l) {
				out = append(out, Finding{Code: "SelectsNothing", Severity: SeverityWarning, Objects: name,
					Message: fmt.Sprintf("spec.selector.matchLabels %s: selects no workload", formatLabels(l))})
			}
		}
	}
	return out
}

// warnFindingsLocked logs what analyzeConfig finds in a configuration just
// committed: accepted, but probably not what was meant.
func (s *Server) warnFindingsLocked() {
	for _, f := range s.findingsLocked() {
		s.logger.Warn("config finding", "code", f.Code, "severity", f.Severity, "objects", strings.Join(f.Objects, ", "), "message", f.Message)
	}
}

// Findings analyzes the configuration in force against the workloads
// known now, as `meshctl analyze -live` shows and Apply logs.
//
// # Experimental
func (s *Server) Findings() []Finding {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.findingsLocked()
}

// findingsLocked counts workloads within their grace period as serving:
// their endpoints are still sent.
func (s *Server) findingsLocked() []Finding {
	reg := buildRegistry(s.trustDomain.Name(), s.declared, append(s.nodeList(), s.departedNodes()...), s.cfg)
	return analyzeConfig(s.cfg, reg)
}

func formatLabels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
