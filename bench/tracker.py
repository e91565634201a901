#!/usr/bin/env python3
"""A minimal BitTorrent HTTP tracker for loopback benchmarks (BEP 3 + compact peers, BEP 23).

    python3 bench/tracker.py PORT

Every info hash is accepted; peers are forgotten after 10 minutes or on event=stopped.
"""
import socketserver, sys, time, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

PEERS = {}  # info_hash -> {(ip, port): last_seen}


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, str):
        return bencode(v.encode())
    if isinstance(v, dict):
        return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        # latin-1 keeps every percent-decoded byte of the binary info_hash as one character
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True, encoding="latin-1")
        get = lambda k: q.get(k, [""])[0].encode("latin-1")
        if url.path == "/peers":  # debugging aid: hex hash -> ip:port lines
            ih = bytes.fromhex(get("hash").decode())
            body = "".join(f"{ip}:{p}\n" for ip, p in PEERS.get(ih, {})).encode()
        elif url.path == "/announce":
            ih, port = get("info_hash"), int(get("port") or 0)
            peers = PEERS.setdefault(ih, {})
            me = (self.client_address[0], port)
            now = time.time()
            for k in [k for k, t in peers.items() if now - t > 600]:
                del peers[k]
            if get("event") == b"stopped":
                peers.pop(me, None)
            elif port:
                peers[me] = now
            compact = b"".join(bytes(map(int, ip.split("."))) + p.to_bytes(2, "big") for ip, p in peers if (ip, p) != me)
            body = bencode({"interval": 5, "min interval": 1, "complete": len(peers), "incomplete": 0, "peers": compact})
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
