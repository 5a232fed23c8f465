//go:build tools

// The Kubernetes control plane the tests run against, built from Kubernetes' own modules:
// kube-apiserver, kube-controller-manager, kube-scheduler, and etcd. Nothing of Kubernetes is
// copied here: go.mod requires k8s.io/kubernetes and replaces each of its staging modules
// (required there at v0.0.0) with the published release of the same minor version.
// tests/cluster/build.py builds these packages into a cache outside the clone.
package cluster

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
