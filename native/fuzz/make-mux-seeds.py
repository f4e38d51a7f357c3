# Seeds for native/fuzz/mux_fuzz.cc (input layout in its header comment), written to
# native/fuzz/corpus/mux/: python3 native/fuzz/make-mux-seeds.py native/fuzz/corpus/mux
import os, sys, struct
out = sys.argv[1]
KEY = bytes([0x5c, 0x13, 0xa7, 0x42])

SYN, ACK, FIN, RST = 1, 2, 4, 8
# Stream selectors: a new id of the harness's parity, the last id Open returned, id n.
NEW, LAST = 0x60, 0xa0
def ID(n): return 0xd0 + n

def cfg(ws_client=0, yamux_client=0, window=0, maxwin=0, small=0, nodispose=0, streams=0, frame=0, msg=0,
        hw=0, chunk=0, end=0, consume=0, deliver=1, seed=0x4d55):
    c0 = ws_client | (yamux_client << 1) | (window << 2) | (maxwin << 4) | (small << 6) | (nodispose << 7)
    c1 = streams | (frame << 3) | (msg << 6)
    c2 = hw | (chunk << 2) | (end << 4) | (consume << 6) | (deliver << 7)
    return bytes([c0, c1, c2, seed & 255, seed >> 8])

def frame(b0, payload, masked):
    n = len(payload); m = 0x80 if masked else 0
    if n < 126: h = bytes([b0, m | n])
    elif n < 65536: h = bytes([b0, m | 126]) + struct.pack('>H', n)
    else: h = bytes([b0, m | 127]) + struct.pack('>Q', n)
    if masked:
        h += KEY
        payload = bytes(b ^ KEY[i & 3] for i, b in enumerate(payload))
    return h + payload

def yhdr(t, flags, sid, length, version=0): return struct.pack('>BBHII', version, t, flags, sid, length)

def start(greeting=b'', head=b''): return bytes([len(greeting)]) + greeting + bytes([len(head)]) + head

def raw(data):
    out = b''
    while data:
        n = min(len(data), 31 + 255)
        piece, data = data[:n], data[n:]
        out += (bytes([n << 3]) if n < 31 else bytes([31 << 3, n - 31])) + piece
    return out

# Yamux frames the harness builds (kind 1): 0 data, 1 window update, 2 ping, 3 go away,
# 4 data past the window, 5 bad version, 6 bad type. Data flags: LINE, the payload starts
# with a short line (the stream's first line, read apart by the mux); LONG, text without a
# newline (a line too long).
LINE, LONG = 0x20, 0x40
def y(kind, flags, sel, lc, hold=0): return bytes([1 | ((kind | (hold << 3)) << 3), flags, sel, lc])
def data(sel, lc, flags=0, hold=0): return y(0, flags, sel, lc, hold)
def wu(sel, lc, flags=0, hold=0): return y(1, flags, sel, lc, hold)
def yraw(b, hold=0): return bytes([1 | ((7 | (hold << 3)) << 3), len(b)]) + b
def flush(frags=1, wrong=0, ping=0, text=0):
    return bytes([2 | (((frags - 1) | (wrong << 2) | (ping << 3) | (text << 4)) << 3)])
# WebSocket frames (kind 3): 0 ping, 1 pong, 2 close, 3 text, 4 text in fragments, 5 any b0, 6 close 1 byte, 7 empty binary.
def ws(kind, lc=0, wrong=0, b0=None):
    return bytes([3 | ((kind | (wrong << 3)) << 3)]) + (bytes([b0]) if b0 is not None else b'') + bytes([lc])
OPEN, WRITE, END, RESET, CONSUME, BIND, TEXT, PING, GOAWAY, CLOSE, TERMINATE, DISPOSE, OPENWRITE, DIAL, DELIVER, BIGWRITE = range(16)
def js(what, a=0, b=0, during=0): return bytes([4 | ((what | (during << 4)) << 3), a, b])
# Bound sockets' other ends (kind 5): 0 write, 1 toggle reading, 2 shut, 3 close, 4 write a lot, 5 read.
def sock(action, sel=0, n=None): return bytes([5 | (action << 3), sel]) + (bytes([n]) if n is not None else b'')
def turn(n=1): return bytes([6 | ((n - 1) << 3)])
def link(op): return bytes([6 | ((16 + op) << 3)])  # 0 toggle reading, 1 hold, 2 shut, 3 close, 4 settle
def policy(bits): return bytes([7 | (bits << 3)])  # 1 consume, 2 bind, 4 dispose on close, 8 deliver, 16 dial

seeds = []
# 0 the agent's side (WebSocket client, yamux server): the gateway opens stream 1 with its line
# and data, JavaScript gets the line, delivers, answers, consumes; pings both ways, a half-close
# each way, the gateway closes.
seeds.append(cfg(ws_client=1) + start() +
             wu(ID(1), 0, SYN) + data(ID(1), 20, LINE) + data(ID(1), 5) + turn(2) + js(WRITE, 0, 50) + js(CONSUME, 0, 0) +
             y(2, SYN, 0, 7) + ws(0, 4) + js(PING) + turn(2) + wu(ID(1), 0, FIN) + turn(2) + js(END, 0) + turn(2) +
             ws(2, 0) + turn(2))
# 1 the gateway's side (WebSocket server, yamux client): JavaScript opens stream 1 with a line
# and writes, the agent acknowledges it and answers with its line and data; control texts both
# ways; go away; the link closed by JavaScript and answered at the end.
seeds.append(cfg(yamux_client=1, end=1) + start(b'HTTP/1.1 101 Switching Protocols\r\n\r\n') +
             js(OPEN, 0, 30) + js(WRITE, 0, 100) + turn(2) + wu(LAST, 0, ACK) + data(LAST, 40, LINE) + turn(2) +
             js(TEXT, 0, 20) + ws(3, 30) + ws(4, 11) + turn(2) + js(CONSUME, 0, 0) + js(END, 0) + data(LAST, 3, FIN) +
             turn(2) + js(GOAWAY, 0, 0) + y(3, 0, 0, 0) + turn(2) + js(OPEN, 0, 5) + turn(2))
# 2 a bound stream, data both ways and a half-close each way: the gateway opens stream 1, the
# agent binds it to a socket (with a head) after its line, bytes go both ways.
seeds.append(cfg(ws_client=1, chunk=1, deliver=0) + start() +
             wu(ID(1), 0, SYN) + data(ID(1), 10, LINE) + data(ID(1), 30) + turn(2) + js(BIND, 0, 3) + turn(1) +
             sock(0, 0, 200) + data(ID(1), 150) + turn(3) + sock(4, 0, 0x13) + data(ID(1), 199) + turn(4) +
             sock(2, 0) + turn(2) + wu(ID(1), 0, FIN) + turn(4) + link(4))
# 3 flow control towards the peer: a write past the window waits for window updates; then a
# stream the gateway opens and binds (the socket owned by the mux) sends 300000 bytes.
seeds.append(cfg(yamux_client=1, chunk=2) + start() +
             js(OPEN, 0, 10) + js(BIGWRITE, 0, 10) + turn(3) + wu(LAST, 0, ACK) + turn(3) + wu(LAST, 64) + turn(3) +
             wu(LAST, 133) + turn(4) + js(END, 0) + turn(3) + js(OPEN, 0, 9) + js(BIND, 1, 16) + turn(2) +
             wu(LAST, 0, ACK) + data(LAST, 5, LINE) + sock(4, 0, 10) + turn(6) + wu(LAST, 0x88) + turn(4) + sock(2, 0) +
             turn(4) + data(LAST, 0, FIN) + link(4))
# 4 flow control from the peer: JavaScript consumes what it gets, the peer fills the window
# exactly, then sends more as it is granted; the window grows (max_window 4 MiB).
seeds.append(cfg(ws_client=1, maxwin=3, consume=1, chunk=3) + start() +
             wu(ID(1), 0, SYN) + data(ID(1), 200 + 0, LINE) + turn(4) + link(4) + data(ID(1), 200 + 0) + turn(4) + link(4) +
             data(ID(1), 200 + 7) + link(4) + wu(ID(1), 0, FIN) + turn(2))
# 5 a protocol error: data past the window (JavaScript does not consume).
seeds.append(cfg(ws_client=1) + start() + wu(ID(1), 0, SYN) + data(ID(1), 200 + 9, LINE) + turn(2) +
             y(4, 0, ID(1), 0) + turn(3))
# 6 protocol errors: an unsupported version, in a message split around a ping.
seeds.append(cfg(yamux_client=1) + start() + wu(ID(2), 0, SYN, hold=1) + y(5, 0, ID(2), 1, hold=1) +
             flush(frags=3, ping=1) + turn(3))
# 7 a stream opened with this side's parity, then an unknown type (never read).
seeds.append(cfg(ws_client=1, yamux_client=0, chunk=1) + start() + wu(ID(2), 0, SYN) + y(6, 0, 0, 9) + turn(3))
# 8 the WebSocket layer: an unmasked frame to the server; and one too big.
seeds.append(cfg() + start() + wu(ID(1), 0, SYN, hold=1) + flush(wrong=1) + turn(2))
seeds.append(cfg(msg=1) + start() + wu(ID(1), 0, SYN) + data(ID(1), 199, LINE) + data(ID(1), 200 + 4) + turn(3))
# 10 the stream limit (1): the second stream the peer opens is refused, JavaScript's Open too.
seeds.append(cfg(ws_client=1, streams=1) + start() + wu(ID(1), 0, SYN) + wu(ID(3), 0, SYN) + data(ID(3), 4) + turn(3) +
             js(OPEN) + js(OPEN) + turn(2) + js(RESET, 0) + wu(ID(5), 0, SYN) + turn(3) + data(ID(1), 9, RST) + turn(2))
# 11 the link ends: Terminate with streams of both kinds open (JavaScript binds on lines).
seeds.append(cfg(yamux_client=1, end=2) + start() + policy(2) + wu(ID(2), 0, SYN) + data(ID(2), 30, LINE) +
             js(OPEN, 0, 12) + js(WRITE, 1, 60) + turn(3) + sock(0, 0, 77) + turn(3))
# 12 the peer shuts its side of the link; events delivered to a JavaScript that does not dispose.
seeds.append(cfg(ws_client=1, end=3, nodispose=1) + start() + wu(ID(1), 0, SYN) + data(ID(1), 12, LINE) + turn(2) +
             js(RESET, 0, 0, during=1) + data(ID(1), 7) + turn(3))
# 13 greeting and head: the head holds the peer's first frames (a SYN and its line, masked).
head = frame(0x82, yhdr(1, SYN, 2, 0) + yhdr(0, 0, 2, 5) + b'abcd\n', True)
seeds.append(cfg(yamux_client=1, deliver=0) + start(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n', head) +
             data(ID(2), 6) + turn(2) + js(BIND, 0, 1) + data(ID(2), 8, FIN) + turn(3) + sock(2, 0) + turn(3))
# 14 a full link: small buffers, low high water, the harness not reading while a bound stream
# and JavaScript write; then it reads again.
seeds.append(cfg(yamux_client=1, small=1, hw=1, chunk=2) + start() + link(0) + js(OPEN, 0, 3) + js(BIND, 0, 8) +
             wu(LAST, 0, ACK) + turn(2) + sock(4, 0, 0x20) + js(OPEN) + js(BIGWRITE, 1, 3) + turn(8) + link(0) + turn(8) +
             sock(2, 0) + turn(8))
# 15 JavaScript acting inside the delivery: binds the peer's streams on their lines; a pong, an
# empty binary frame; the peer's close (1001, a UTF-8 reason).
seeds.append(cfg(ws_client=1) + start() + policy(2) + wu(ID(1), 0, SYN) + data(ID(1), 33, LINE) + turn(2) +
             wu(ID(3), 0, SYN) + ws(1, 3) + ws(7) + turn(3) + ws(2, 0x21) + turn(3))
# 16 a peer's close with a 1-byte payload; a ping with SYN on a stream (a protocol error).
seeds.append(cfg(yamux_client=1) + start() + ws(6) + turn(2))
seeds.append(cfg() + start() + y(2, SYN, 0x80 | ID(5), 3) + turn(2))
# 18 raw bytes: a masked frame built by hand holding two yamux frames, and a fragmented text.
seeds.append(cfg() + start() + raw(frame(0x82, yhdr(1, SYN, 1, 0) + yhdr(0, FIN, 1, 3) + b'hi\n', True) +
             frame(0x01, b'fra', True) + frame(0x89, b'', True) + frame(0x80, b'g', True)) + turn(3) + js(WRITE, 0, 9) +
             js(END, 0) + turn(2))
# 19 the agent dials a service for the gateway's stream: it answers (ok line, then bytes both
# ways, half-closes); a second stream's dial is refused and answered by JavaScript.
seeds.append(cfg(ws_client=1, deliver=0, chunk=3) + start() + wu(ID(1), 0, SYN) + data(ID(1), 30, LINE) + turn(2) +
             js(DIAL, 0, 0x28) + turn(3) + data(ID(1), 100) + sock(0, 0, 90) + turn(4) + sock(2, 0) + wu(ID(1), 0, FIN) +
             turn(4) + wu(ID(3), 0, SYN) + data(ID(3), 9, LINE) + turn(2) + js(DIAL, 1, 0x11) + turn(4) +
             js(WRITE, 1, 20) + js(END, 1) + turn(3) + link(4))
# 20 a dial that gets no answer (its timeout ends it), the stream answered by JavaScript then;
# a dial to something that is not an address; a line too long.
seeds.append(cfg(ws_client=1, deliver=0, chunk=3) + start() + wu(ID(1), 0, SYN) + data(ID(1), 20, LINE) + turn(2) +
             js(DIAL, 0, 0x0e) + turn(1) + data(ID(1), 40) + link(4) + wu(ID(1), 8) + js(WRITE, 0, 10) + js(END, 0) +
             wu(ID(3), 0, SYN) + data(ID(3), 9, LINE) + turn(2) + js(DIAL, 1, 0x03) + js(DELIVER, 1) +
             wu(ID(5), 0, SYN) + data(ID(5), 200 + 4, LONG) + data(ID(5), 1, LONG) + turn(3) + link(4))
# 21 the gateway binds its own stream before the agent's answer line comes (the line still
# comes as an event, what follows goes to the socket).
seeds.append(cfg(yamux_client=1, deliver=0) + start() + js(OPEN, 0, 8) + js(BIND, 0, 0x0b) + turn(2) +
             wu(LAST, 0, ACK) + data(LAST, 50, LINE) + turn(3) + sock(0, 0, 33) + data(LAST, 0, FIN) + turn(3) +
             sock(2, 0) + turn(3) + link(4))
# 22 JavaScript closes the link while a stream is busy (the peer keeps sending, and pings):
# nothing follows the close frame; the peer answers the close.
seeds.append(cfg(ws_client=1, consume=1) + start() + wu(ID(1), 0, SYN) + data(ID(1), 20, LINE) + turn(2) +
             js(CLOSE, 0, 1) + turn(2) + data(ID(1), 200 + 6) + y(2, SYN, 0, 7) + data(ID(1), 200 + 6) + link(4) +
             y(6, 0, 0, 9) + turn(2) + ws(2, 0) + turn(2))
# 23 a write past what waits (Write returns false): the peer grants more, kEvDrain follows.
seeds.append(cfg(yamux_client=1, chunk=3) + start() + js(OPEN, 0, 6) + js(BIGWRITE, 0, 12) + turn(3) +
             wu(LAST, 0x80 + 5) + turn(4) + link(4) + js(END, 0) + turn(2))
# 24 JavaScript delivers a held stream and binds it in the same delivery: what was delivered
# but not handed over yet goes to the socket (after the head).
seeds.append(cfg(ws_client=1, deliver=0, chunk=3) + start() + wu(ID(1), 0, SYN) + data(ID(1), 40, LINE) + turn(2) +
             data(ID(1), 60) + js(DELIVER, 0, 0, during=1) + js(BIND, 0, 2, during=1) + wu(ID(3), 0, SYN) + turn(3) +
             data(ID(1), 20, FIN) + turn(3) + sock(2, 0) + link(4))
# 25 a bound socket that takes little (4 KiB buffers) and is not read: the mux queues for it,
# then the harness closes it (the stream is reset on the write error).
seeds.append(cfg(ws_client=1, chunk=3, deliver=0) + start() + wu(ID(1), 0, SYN) + data(ID(1), 10, LINE) + turn(2) +
             js(BIND, 0, 8) + sock(1, 0) + data(ID(1), 200 + 6) + data(ID(1), 200 + 6) + turn(4) + sock(3, 0) +
             data(ID(1), 200 + 3) + turn(4) + link(4))

os.makedirs(out, exist_ok=True)
for i, s in enumerate(seeds):
    with open(os.path.join(out, 'seed-%02d' % i), 'wb') as f:
        f.write(s)
print('%d seeds in %s' % (len(seeds), out))
