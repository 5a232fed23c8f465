//go:build tools

// kwok: nodes that join, heartbeat and go NotReady without a real kubelet (as Cluster Autoscaler
// and Karpenter test at scale). Built by tests/cluster/build.py.
package kwok

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
