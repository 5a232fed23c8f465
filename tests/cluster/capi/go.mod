// Cluster API's CustomResourceDefinitions for the test cluster (config/crd/bases, read from Go's
// module cache by tests/cluster/cluster_api.py); nothing is built from it, so it has no packages.
module dpe/tests/cluster/capi

go 1.26.0

require sigs.k8s.io/cluster-api v1.12.0
