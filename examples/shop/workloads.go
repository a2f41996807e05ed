package shop

import "mesh/controlplane"

// Workloads are the example's workloads as the control plane registers them:
// name, identity (service account), the service they serve and their labels.
func Workloads() []controlplane.Workload {
	payments := func(version string) controlplane.Workload {
		return controlplane.Workload{
			Name: "payments-" + version, Namespace: "default", ServiceAccount: "payments",
			Service: "payments", Port: PaymentsPort,
			Labels: map[string]string{"app": "payments", "version": version},
		}
	}
	return []controlplane.Workload{
		payments("v1"),
		payments("v2"),
		{
			Name: "checkout", Namespace: "default", ServiceAccount: "checkout",
			Service: "checkout", Port: 8080,
			Labels: map[string]string{"app": "checkout", "version": "v1"},
		},
	}
}

// WebWorkloads are the web service's versions v1 and v2, served over
// net/http.
func WebWorkloads() []controlplane.Workload {
	web := func(version string) controlplane.Workload {
		return controlplane.Workload{
			Name: "web-" + version, Namespace: "default", ServiceAccount: "web",
			Service: "web", Port: WebPort,
			Labels: map[string]string{"app": "web", "version": version},
		}
	}
	return []controlplane.Workload{web("v1"), web("v2")}
}
