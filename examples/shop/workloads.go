package shop

import "mesh/controlplane"

// Workloads are the example's workloads as the control plane registers them:
// name, identity (service account), the service they serve and their labels.
func Workloads() []controlplane.Workload {
	return []controlplane.Workload{
		versioned("payments-v1", "payments", "v1", PaymentsPort),
		versioned("payments-v2", "payments", "v2", PaymentsPort),
		versioned("checkout", "checkout", "v1", 8080),
	}
}

// WebWorkloads are the web service's versions v1 and v2, served over
// net/http.
func WebWorkloads() []controlplane.Workload {
	return []controlplane.Workload{versioned("web-v1", "web", "v1", WebPort), versioned("web-v2", "web", "v2", WebPort)}
}

// versioned is workload name, one version of service, running as service
// account <service>, labelled app and version as Istio's canonical labels
// want.
func versioned(name, service, version string, port uint32) controlplane.Workload {
	return controlplane.Workload{
		Name: name, Namespace: "default", ServiceAccount: service,
		Service: service, Port: port,
		Labels: map[string]string{"app": service, "version": version},
	}
}
