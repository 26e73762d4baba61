// A tiny TCP throughput probe run inside testbed namespaces (ip netns exec NS node --import tsx THIS ...).
//   recv PORT CONNS         listen, print LISTENING, take CONNS connections, print {"bytes","elapsedMs"}
//                           counted from the first byte received to the last, then exit
//   send HOST PORT BYTES    connect, send BYTES as fast as TCP allows, print {"bytes","elapsedMs"}, exit
//   echo PORT               listen, print LISTENING, echo every connection's bytes back (until killed)
//   rtt HOST PORT N         connect, do N one-byte round trips, print {"medianMs","minMs","maxMs"}, exit
// Bounded: either side exits with code 3 after 60 s.
import { createServer, connect } from 'node:net'

const LIFETIME_MS = 60_000
const CHUNK = Buffer.alloc(64 * 1024, 0x5a)
setTimeout(() => { console.error('probe: lifetime exceeded'); process.exit(3) }, LIFETIME_MS).unref()

const [mode, a, b, c] = process.argv.slice(2)
if (mode === 'recv') {
  const port = Number(a)
  let pending = Number(b ?? '1')
  let bytes = 0
  let first = 0
  let last = 0
  const server = createServer((sock) => {
    sock.on('data', (d: Buffer) => {
      const now = performance.now()
      if (bytes === 0) first = now
      bytes += d.length
      last = now
    })
    sock.on('close', () => {
      if (--pending === 0) {
        console.log(JSON.stringify({ bytes, elapsedMs: last - first }))
        server.close()
        process.exit(0)
      }
    })
    sock.on('error', () => {})
  })
  server.listen(port, '0.0.0.0', () => { console.log('LISTENING') })
} else if (mode === 'send') {
  const total = Number(c)
  let sent = 0
  const start = performance.now()
  const sock = connect({ host: a, port: Number(b) }, () => {
    const pump = (): void => {
      while (sent < total) {
        const n = Math.min(CHUNK.length, total - sent)
        sent += n
        if (!sock.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) { sock.once('drain', pump); return }
      }
      sock.end(() => {
        console.log(JSON.stringify({ bytes: sent, elapsedMs: performance.now() - start }))
      })
    }
    pump()
  })
  sock.on('error', (err) => { console.error(`probe: ${err.message}`); process.exit(2) })
  sock.on('close', () => { process.exit(0) })
} else if (mode === 'echo') {
  createServer((sock) => { sock.setNoDelay(true); sock.pipe(sock); sock.on('error', () => {}) })
    .listen(Number(a), '0.0.0.0', () => { console.log('LISTENING') })
} else if (mode === 'rtt') {
  const n = Number(c)
  const rtts: number[] = []
  const sock = connect({ host: a, port: Number(b) }, () => {
    sock.setNoDelay(true)
    let t0 = performance.now()
    sock.on('data', () => {
      rtts.push(performance.now() - t0)
      if (rtts.length === n) {
        rtts.sort((x, y) => x - y)
        console.log(JSON.stringify({ medianMs: rtts[Math.floor(n / 2)], minMs: rtts[0], maxMs: rtts[n - 1] }))
        sock.end()
        return
      }
      t0 = performance.now()
      sock.write('x')
    })
    sock.write('x')
  })
  sock.on('error', (err) => { console.error(`probe: ${err.message}`); process.exit(2) })
  sock.on('close', () => { process.exit(0) })
} else {
  console.error('usage: testbed-probe.ts recv PORT CONNS | send HOST PORT BYTES | echo PORT | rtt HOST PORT N')
  process.exit(2)
}
