// sumdbd serves a Go checksum database for the tests: the records of every module version in a
// GOPROXY directory, signed with a key made at start-up, through golang.org/x/mod's own
// checksum database server. It prints its verifier key (as GOSUMDB takes it) on the first line
// of standard output, then serves on 127.0.0.1 until it is killed.
//
// Usage: sumdbd -listen 127.0.0.1:PORT -modules DIR -name NAME
package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (loopback only)")
	modules := flag.String("modules", "", "GOPROXY directory whose versions the database records")
	name := flag.String("name", "sum.proxyd.test", "the database's name")
	flag.Parse()

	signer, verifier, err := note.GenerateKey(rand.Reader, *name)
	if err != nil {
		log.Fatal(err)
	}
	records := func(path, version string) ([]byte, error) {
		escaped, err := module.EscapePath(path)
		if err != nil {
			return nil, err
		}
		escapedVersion, err := module.EscapeVersion(version)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(*modules, escaped, "@v", escapedVersion)
		zipHash, err := dirhash.HashZip(base+".zip", dirhash.Hash1)
		if err != nil {
			return nil, err
		}
		goMod, err := os.ReadFile(base + ".mod")
		if err != nil {
			return nil, err
		}
		open := func(string) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(goMod)), nil }
		modHash, err := dirhash.Hash1([]string{"go.mod"}, open)
		if err != nil {
			return nil, err
		}
		return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, version, zipHash, path, version, modHash)), nil
	}
	server := sumdb.NewServer(sumdb.NewTestServer(signer, records))
	mux := http.NewServeMux()
	for _, p := range sumdb.ServerPaths {
		mux.Handle(p, server)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(verifier)
	fmt.Println(listener.Addr().String())
	os.Stdout.Sync()
	log.Fatal(http.Serve(listener, mux))
}
