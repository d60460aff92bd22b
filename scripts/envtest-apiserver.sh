#!/usr/bin/env bash
# A real kube-apiserver for the integration tests, from the envtest binaries of KUBEBUILDER_ASSETS.
#
#   envtest-apiserver.sh start RUN_DIR [PORT]   start etcd + kube-apiserver; prints KUBECONFIG=RUN_DIR/kubeconfig
#   envtest-apiserver.sh stop  RUN_DIR          stop the two processes started for RUN_DIR
#
# Same interface and layout as shared/k8s/apiserver.sh (etcd on PORT+10000, PORT+10001 for its
# peers), so the tests use either. KUBEBUILDER_ASSETS is controller-runtime's envtest convention: a
# directory holding `etcd` and `kube-apiserver` (get one with
# `setup-envtest use -p path` from sigs.k8s.io/controller-runtime/tools/setup-envtest). The server is
# started the way envtest starts it (controller-runtime's controlplane defaults: secure port only,
# RBAC authorisation, no ServiceAccount admission, a service-account key of its own) and the tests
# authenticate with a client certificate in group system:masters. NamespaceLifecycle admission is
# off too, as on shared/k8s's server (which has no namespaces at all): the tests use namespaces of
# their own without creating them. Needs bash, openssl and curl.
set -euo pipefail
cmd=${1:?usage: envtest-apiserver.sh start|stop RUN_DIR [PORT]}
run=$(realpath -m "${2:?usage: envtest-apiserver.sh start|stop RUN_DIR [PORT]}")
port=${3:-6443}

stop() {
  for p in apiserver etcd; do
    [[ -f $run/$p.pid ]] && kill "$(cat "$run/$p.pid")" 2>/dev/null || true
    rm -f "$run/$p.pid"
  done
}
[[ $cmd == stop ]] && { stop; exit 0; }
[[ $cmd == start ]] || { echo "unknown command $cmd" >&2; exit 2; }

assets=${KUBEBUILDER_ASSETS:?KUBEBUILDER_ASSETS must name a directory with etcd and kube-apiserver}
for b in etcd kube-apiserver; do
  [[ -x $assets/$b ]] || { echo "KUBEBUILDER_ASSETS=$assets has no executable $b" >&2; exit 1; }
done

pki=$run/pki
mkdir -p "$pki"
if [[ ! -f $run/kubeconfig ]]; then
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=meshnet-test-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n') 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 \
      -extfile <(printf 'extendedKeyUsage=clientAuth\n') 2>/dev/null
    # kube-apiserver refuses to start without a service-account signing key
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  cat > "$run/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- cluster: {server: "https://127.0.0.1:$port", certificate-authority: $pki/ca.crt}
  name: local
users:
- name: admin
  user: {client-certificate: $pki/admin.crt, client-key: $pki/admin.key}
contexts:
- context: {cluster: local, user: admin, namespace: default}
  name: local
current-context: local
KC
fi

etcd_port=$((port + 10000))
"$assets/etcd" --data-dir "$run/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --unsafe-no-fsync >"$run/etcd.log" 2>&1 &
echo $! >"$run/etcd.pid"
"$assets/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --advertise-address 127.0.0.1 \
  --bind-address 127.0.0.1 --secure-port "$port" --cert-dir "$pki" \
  --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" --client-ca-file "$pki/ca.crt" \
  --authorization-mode RBAC --disable-admission-plugins ServiceAccount,NamespaceLifecycle --allow-privileged=true \
  --service-cluster-ip-range 10.0.0.0/24 --service-account-issuer "https://127.0.0.1:$port/" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  >"$run/apiserver.log" 2>&1 &
echo $! >"$run/apiserver.pid"

for _ in $(seq 1 300); do
  if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
      "https://127.0.0.1:$port/apis/apiextensions.k8s.io/v1/customresourcedefinitions?limit=1" >/dev/null 2>&1; then
    echo "KUBECONFIG=$run/kubeconfig"
    exit 0
  fi
  sleep 0.1
done
echo "kube-apiserver did not start; last lines of its log:" >&2
tail -20 "$run/apiserver.log" >&2
stop
exit 1
