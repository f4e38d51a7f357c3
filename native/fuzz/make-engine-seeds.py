# Seeds for native/fuzz/engine_fuzz.cc (input layout in its header comment), written to
# native/fuzz/corpus/engine/: python3 native/fuzz/make-engine-seeds.py native/fuzz/corpus/engine
import os, sys, struct
out = sys.argv[1]
KEY = bytes([0x37, 0xfa, 0x21, 0x3d])

def frame(b0, payload, masked):
    if isinstance(payload, str): payload = payload.encode()
    n = len(payload); m = 0x80 if masked else 0
    if n < 126: h = bytes([b0, m | n])
    elif n < 65536: h = bytes([b0, m | 126]) + struct.pack('>H', n)
    else: h = bytes([b0, m | 127]) + struct.pack('>Q', n)
    if masked:
        h += KEY
        payload = bytes(b ^ KEY[i & 3] for i, b in enumerate(payload))
    return h + payload

C = lambda b0, p: frame(b0, p, True)    # client frames: masked
U = lambda b0, p: frame(b0, p, False)   # upstream frames: unmasked
close = lambda code, reason=b'': struct.pack('>H', code) + reason

def cfg(mode=0, env=0, policy=0, echo=0, small=0, maxf=9, frags=0, hw=7, cap=0, cbytes=0,
        ping=0, timeout=0, expires=0, rate=0, bps=0, closeall=0, shutpeers=0, destroy=0, shutdown=0,
        noread_c=0, noread_u=0, seed=0x1234, chunk=0, large=0):
    c0 = mode | (env << 1) | (policy << 3) | (echo << 5) | (small << 7)
    c1 = maxf | (frags << 4)
    c2 = hw | (cap << 3) | (cbytes << 5)
    c3 = ping | (timeout << 2) | (expires << 4) | (rate << 6)
    c4 = bps | (closeall << 1) | (shutpeers << 2) | (destroy << 3) | (shutdown << 4) | (noread_c << 5) | (noread_u << 6)
    return bytes([c0, c1, c2, c3, c4, seed & 255, seed >> 8, chunk | (large << 2)])

def heads(ch=b'', uh=b''):
    return bytes([len(ch)]) + ch + bytes([len(uh)]) + uh

def raw(side, data):
    out = b''
    while data:
        n = min(len(data), 31 + 255)
        piece, data = data[:n], data[n:]
        if n < 31: out += bytes([side | (n << 3)]) + piece
        else: out += bytes([side | (31 << 3), n - 31]) + piece
    return out

def gen(side, b0, lc, pattern=2, badmask=0):
    return bytes([2 | ((side | (badmask << 1) | (pattern << 2)) << 3), b0, lc])
def js(what, p, during=False): return bytes([(4 if during else 3) | (what << 3), p])
def peers(arg): return bytes([5 | (arg << 3)])
def turn(n=1): return bytes([6 | ((n - 1) << 3)])
def sweep(j): return bytes([7 | (j << 3)])
def hold(): return bytes([6 | (16 << 3)])

seeds = []
# 1 transparent: frames both ways, a fragmented text with a ping inside, closes.
seeds.append(cfg(chunk=0) + heads(C(0x81, 'hi'), U(0x82, b'\x01\x02')) +
             raw(0, C(0x81, 'hello') + C(0x82, bytes(range(40))) + C(0x89, 'p') + C(0x01, 'fra') + C(0x89, '') + C(0x80, 'g')) +
             raw(1, U(0x81, 'world') + U(0x8a, '') + U(0x82, bytes(130))) + turn(3) +
             raw(0, C(0x88, close(1000, b'bye'))) + turn(2) + raw(1, U(0x88, close(1000, b'bye'))) + turn(2))
# 2 transparent, small buffers, low high water: a streamed 300000-byte binary frame, reading paused then resumed.
seeds.append(cfg(small=1, hw=3, maxf=13, noread_c=1, chunk=2) + heads() + gen(1, 0x82, 212) + turn(8) + peers(1) + turn(8) +
             gen(0, 0x82, 207) + raw(1, U(0x81, 'after')) + turn(4))
# 3 the drop policy, one message of channel, many messages.
seeds.append(cfg(policy=2, cap=1, cbytes=2, small=1, noread_u=1, chunk=1) + heads() +
             b''.join(raw(0, C(0x82, bytes([i]) * 100)) for i in range(12)) + turn(4) + peers(2) + turn(4))
# 4 the close policy.
seeds.append(cfg(policy=1, cap=2, cbytes=3, small=1, noread_c=1, chunk=1) + heads() +
             b''.join(raw(1, U(0x82, bytes([i]) * 300)) for i in range(10)) + turn(4) + peers(1) + turn(2))
# 5 messages mode, JavaScript echoes to the other side.
seeds.append(cfg(mode=1, echo=1, chunk=0) + heads(C(0x81, 'head')) +
             raw(0, C(0x81, 'one') + C(0x02, 'tw') + C(0x80, 'o') + C(0x82, bytes(200))) +
             raw(1, U(0x81, 'up') + U(0x89, 'ping')) + turn(3) + js(3, 0x11) + turn(2) + raw(0, C(0x88, close(1001))) + turn(3))
# 6 messages mode, echoes to both sides, pause at a tiny high water.
seeds.append(cfg(mode=1, echo=3, hw=2, small=1, noread_c=1, chunk=1, shutpeers=1) + heads() +
             b''.join(raw(0, C(0x81, 'm%d' % i * 20)) for i in range(8)) + turn(4) + peers(1) + turn(4))
# 7 envelope v1.
v1 = [b'{"type":"data","data":"aGVsbG8="}', b'{"type":"ping"}', b'{"type":"ping","data":"AAEC"}', b'{"type":"pong"}',
      b'{"type":"control","payload":{"a":1}}', b'{"type":"error","reason":"x"}', b'{"type":"data","data":"a"}']
seeds.append(cfg(mode=1, env=1) + heads() + raw(0, b''.join(C(0x81, m) for m in v1[:6])) + raw(1, U(0x82, 'from upstream')) +
             turn(3) + raw(0, C(0x81, b'{"type":"close","code":4000,"reason":"done"}')) + turn(3) + raw(1, U(0x88, close(4000, b'done'))) + turn(2))
seeds.append(cfg(mode=1, env=1, seed=7) + heads() + raw(0, C(0x81, v1[6])) + turn(3))
seeds.append(cfg(mode=1, env=1, seed=8) + heads() + raw(0, C(0x82, b'binary on v1')) + turn(3))
# 8 envelope v2.
def env2(t, flags, payload, ver=2, res=0):
    if isinstance(payload, str): payload = payload.encode()
    return bytes([ver, t, flags, res]) + struct.pack('>I', len(payload)) + payload
seeds.append(cfg(mode=1, env=2) + heads(C(0x82, env2(1, 0, 'in head'))) +
             raw(0, C(0x82, env2(1, 4, 'data')) + C(0x82, env2(2, 0, 'pi')) + C(0x82, env2(3, 0, '')) + C(0x82, env2(6, 0, '{"x":1}')) +
                 C(0x82, env2(5, 0, 'oops')) + C(0x82, env2(6, 0, 'nojson'))) +
             raw(1, U(0x82, 'up data') + U(0x81, 'up text')) + turn(3))
seeds.append(cfg(mode=1, env=2, seed=9) + heads() + raw(0, C(0x82, env2(1, 0, 'x')) + C(0x82, env2(4, 0, close(1000, b'bye')))) + turn(4) +
             raw(1, U(0x88, close(1000, b'bye'))) + turn(2))
seeds.append(cfg(mode=1, env=2, seed=10) + heads() + raw(0, C(0x82, env2(9, 0, 'bad type')) + C(0x81, 'text on v2')) + turn(3))
# 9 protocol errors.
errs = [U(0x82, 'unmasked from the client'), C(0x83, 'x'), C(0x81, b'\xc3\x28'), C(0x88, b'\x03'), C(0x88, close(1005)),
        C(0x89, bytes(126)), C(0x09, ''), C(0x80, 'x'), C(0xc2, 'rsv1'), C(0x88, close(1000, b'\xff'))]
for i, e in enumerate(errs):
    seeds.append(cfg(mode=i & 1, seed=20 + i) + heads() + raw(0, C(0x81, 'before') + e + C(0x81, 'after')) + turn(3))
seeds.append(cfg(seed=40) + heads() + raw(1, C(0x82, 'masked from upstream') + U(0x81, b'\xed\xa0\x80')) + turn(3))
# 10 the clock: pings every sweep, heartbeat timeouts, expiry, lingers.
seeds.append(cfg(ping=1, timeout=2, seed=50) + heads() + raw(0, C(0x81, 'a')) + sweep(0) + turn(2) + sweep(4) + turn(2) + sweep(13) + turn(2))
seeds.append(cfg(expires=2, seed=51, mode=1, env=2) + heads() + raw(0, C(0x82, env2(1, 0, 'x'))) + turn(2) + sweep(4) + turn(3) + sweep(9) + turn(3))
seeds.append(cfg(seed=52) + heads() + js(0, 0x09) + turn(2) + sweep(9) + turn(2) + sweep(10) + turn(2))
seeds.append(cfg(seed=53, noread_u=1, small=1) + heads() + gen(0, 0x82, 211) + turn(4) + raw(0, C(0x88, close(1000))) + sweep(10) + turn(3))
# 11 JavaScript: shutdown with a long reason, fail, destroy, send, flow; and during a delivery.
seeds.append(cfg(mode=1, echo=1, seed=60) + heads() + raw(0, C(0x81, 'x')) + turn(2) + js(4, 0) + js(3, 0x1d) + js(3, 0x0c) + turn(2) +
             js(0, 0x1b) + turn(2) + raw(0, C(0x88, close(1000))) + raw(1, U(0x88, close(1001))) + turn(3))
seeds.append(cfg(mode=1, env=1, seed=61) + heads() + js(2, 0, during=True) + raw(0, C(0x81, v1[0])) + turn(4))
seeds.append(cfg(mode=1, seed=62) + heads() + js(1, 0x31, during=True) + raw(0, C(0x81, 'x')) + raw(1, U(0x81, 'y')) + turn(4))
seeds.append(cfg(seed=63) + heads() + raw(0, C(0x81, 'x')) + turn(1) + js(1, 0x00) + turn(3))
seeds.append(cfg(seed=64) + heads() + raw(0, C(0x81, 'x')) + turn(1) + js(2, 0x00) + turn(3))
seeds.append(cfg(mode=1, seed=65, closeall=1) + heads() + raw(0, C(0x81, 'x')) + turn(1) + js(6, 0) + turn(3))
# 12 peers: a reset with unread data, a half close.
seeds.append(cfg(seed=70) + heads() + raw(1, U(0x82, bytes(1000))) + turn(1) + peers(0x11) + raw(1, U(0x81, 'x')) + turn(3))
seeds.append(cfg(seed=71, mode=1) + heads() + raw(0, C(0x81, 'x')) + peers(4) + turn(3) + raw(1, U(0x81, 'y')) + turn(3))
seeds.append(cfg(seed=72) + heads() + raw(0, C(0x82, bytes(50))[:20]) + peers(4) + turn(3))
# 13 endings.
for i, kw in enumerate([dict(closeall=1), dict(shutpeers=1), dict(destroy=1), dict(shutdown=1), dict(destroy=1, mode=1, echo=1)]):
    seeds.append(cfg(seed=80 + i, **kw) + heads() + raw(0, C(0x81, 'x')) + raw(1, U(0x81, 'y')))
# 14 limits.
seeds.append(cfg(maxf=2, frags=6, seed=90) + heads() + raw(0, C(0x82, bytes(125)) + C(0x82, bytes(126))) + turn(2))
seeds.append(cfg(maxf=9, frags=2, seed=91) + heads() + raw(0, C(0x01, 'a') + C(0x00, 'b') + C(0x80, 'c')) + turn(2))
seeds.append(cfg(mode=1, maxf=0, seed=92) + heads() + raw(1, U(0x01, 'abcdefgh') + U(0x80, 'ijklmnopq')) + turn(2))
# 15 rate limits.
seeds.append(cfg(rate=1, bps=1, seed=95) + heads() + raw(0, C(0x81, 'a') + C(0x89, '') + C(0x81, 'b') + C(0x81, 'c')) + turn(3))

# 16 backlogs: drop and close policies against a side that does not read (filler frames).
seeds.append(cfg(policy=2, cap=1, cbytes=3, small=1, noread_u=1, chunk=2, seed=100) + heads() +
             b''.join(gen(0, 0x82, 204) for _ in range(20)) + turn(4) + peers(2) + turn(4))
seeds.append(cfg(policy=1, cap=2, cbytes=4, small=1, noread_c=1, chunk=2, seed=101) + heads() +
             b''.join(gen(1, 0x82, 204) for _ in range(20)) + turn(4) + peers(1) + turn(4))
seeds.append(cfg(mode=1, env=2, policy=1, cap=1, cbytes=3, small=1, noread_u=1, chunk=2, seed=102) + heads() +
             b''.join(gen(0, 0x82, 204, pattern=4) for _ in range(20)) + turn(4))
seeds.append(cfg(mode=1, env=2, policy=2, cap=1, cbytes=3, small=1, noread_u=1, chunk=2, seed=103) + heads() +
             b''.join(gen(0, 0x82, 204, pattern=4) for _ in range(20)) + turn(4) + peers(2) + turn(4))
# 17 a large binary frame streaming from the client, cut off by its end.
seeds.append(cfg(maxf=13, chunk=2, seed=110) + heads() + gen(0, 0x82, 211) + turn(6) + raw(0, C(0x81, 'after')) + turn(2))
seeds.append(cfg(maxf=13, chunk=2, seed=111) + heads() + raw(0, C(0x82, bytes(300000))[:4000]) + turn(3) + raw(1, U(0x89, 'x')) + turn(2) + peers(4) + turn(4))
# 18 a batch of over 1 MiB (messages mode): reading waits for the delivery.
seeds.append(cfg(mode=1, maxf=14, echo=1, chunk=2, seed=120) + heads() + gen(0, 0x82, 213) + gen(0, 0x82, 208) + gen(0, 0x81, 10) + turn(8))
# 19 envelope v2 closes that are not well formed.
for i, body in enumerate([b'\x03', close(1005), close(1000, b'\xff'), b'', close(999)]):
    seeds.append(cfg(mode=1, env=2, seed=130 + i) + heads() + raw(0, C(0x82, env2(4, 0, body))) + turn(3))
# 20 sustained backpressure (the sweep's clock moves on), then cleared.
seeds.append(cfg(mode=1, env=1, hw=4, small=1, noread_u=1, chunk=2, seed=140) + heads() +
             b''.join(raw(0, C(0x81, b'{"type":"data","data":"' + b'QUFB' * 60 + b'"}')) for _ in range(12)) + turn(4) +
             sweep(6) + sweep(6) + turn(2) + peers(2) + turn(6) + sweep(1) + turn(2))
seeds.append(cfg(policy=1, cap=3, cbytes=4, small=1, noread_u=1, chunk=2, seed=141) + heads() +
             b''.join(gen(0, 0x82, 204) for _ in range(6)) + sweep(6) + sweep(6) + turn(2))
# 21 an envelope v1 client gets the upstream's close reason, escaped.
seeds.append(cfg(mode=1, env=1, seed=150) + heads() + raw(1, U(0x88, close(4001, b'a"b\\c\n\x01\t'))) + turn(3))
# 22 refused adopts.
seeds.append(cfg(seed=160) + heads() + js(7, 0) + js(7, 1) + js(7, 2) + js(7, 3) + raw(0, C(0x81, 'x')) + turn(2))
# 23 the upstream's end while the client's close waits for its reply; a close from a side whose partner is gone.
seeds.append(cfg(seed=170) + heads() + raw(0, C(0x88, close(1000))) + turn(2) + peers(8) + turn(3))
seeds.append(cfg(seed=171) + heads() + peers(8) + turn(3) + raw(0, C(0x88, close(1000))) + turn(3))

# 24 sustained backpressure in transparent mode; the upstream's heartbeat timeout (the client
# is paused, so only the upstream is silent).
seeds.append(cfg(hw=2, small=1, noread_u=1, chunk=2, seed=180) + heads() + b''.join(gen(0, 0x82, 204) for _ in range(10)) +
             turn(3) + sweep(6) + sweep(6) + turn(2))
seeds.append(cfg(mode=1, env=1, hw=2, small=1, noread_u=1, chunk=2, seed=181) + heads() +
             b''.join(gen(0, 0x81, 204, pattern=5) for _ in range(10)) + turn(3) + sweep(6) + sweep(6) + turn(2) +
             peers(2) + turn(6) + sweep(1) + turn(2))
seeds.append(cfg(hw=2, small=1, noread_u=1, chunk=2, seed=182) + heads() + b''.join(gen(0, 0x82, 204) for _ in range(10)) +
             turn(3) + sweep(13) + turn(3))
# 25 more than one read waits in a socket (large socket buffers): the fairness cap, a full batch.
seeds.append(cfg(mode=1, maxf=14, hw=7, chunk=3, large=1, seed=190) + heads() + hold() + gen(0, 0x82, 213) + gen(1, 0x82, 209) +
             gen(0, 0x82, 213) + hold() + turn(8))
seeds.append(cfg(maxf=13, chunk=3, large=1, seed=191) + heads() + gen(0, 0x82, 213) + gen(0, 0x82, 208) + turn(8))

# 26 a ping from the side a large frame streams to: its pong waits for the frame's end (or is
# dropped when the sender vanishes mid-frame).
seeds.append(cfg(maxf=13, chunk=2, seed=200) + heads() + gen(0, 0x82, 212) + b''.join(raw(1, U(0x89, 'p%d' % i)) + turn(2) for i in range(6)) + turn(4))
seeds.append(cfg(maxf=13, chunk=2, seed=201) + heads() + gen(1, 0x82, 212) + b''.join(raw(0, C(0x89, 'q%d' % i)) + turn(2) for i in range(6)) +
             raw(0, C(0x88, close(1000))) + turn(4))
seeds.append(cfg(maxf=13, chunk=1, seed=202) + heads() + raw(0, C(0x82, bytes(300000))[:2000]) + raw(1, U(0x89, 'p')) + turn(3) + peers(0x11) + turn(4))

# 27 messages and the close behind them in one read: the close waits for JavaScript's echoes.
seeds.append(cfg(mode=1, echo=1, chunk=3, seed=210) + heads() + raw(0, C(0x81, 'a') + C(0x82, 'bb') + C(0x88, close(1000, b'done'))) +
             turn(4) + raw(1, U(0x88, close(1000, b'done'))) + turn(3))
seeds.append(cfg(mode=1, echo=1, chunk=3, seed=211) + heads() + raw(1, U(0x81, 'x') + U(0x88, close(1001))) + turn(4))

# 28 messages and then the sender's end (FIN) in one read: its partner's close comes after them.
seeds.append(cfg(mode=1, echo=1, chunk=3, seed=220) + heads() + hold() + raw(0, C(0x81, 'a') + C(0x82, 'bb')) + peers(4) + hold() + turn(4))
seeds.append(cfg(chunk=3, seed=221) + heads() + hold() + raw(1, U(0x81, 'a') + U(0x82, 'bb')) + peers(8) + hold() + turn(4))

os.makedirs(out, exist_ok=True)
for f in os.listdir(out): os.remove(os.path.join(out, f))
for i, s in enumerate(seeds):
    assert len(s) <= 4096, (i, len(s))
    open(os.path.join(out, 'seed-%02d' % i), 'wb').write(s)
print(len(seeds), 'seeds in', out)
