// The etcd server at the version kube-apiserver v1.37.2 is built against,
// built from the published Go modules (Debian's etcd is too old).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
