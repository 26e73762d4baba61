// A userspace TCP forwarder that adds a fixed one-way delay in each direction (this kernel has no netem).
// Run it in the namespace of the side that should see the latency, and point that side's client at it:
//   ip netns exec vmtb-h1 node --import tsx scripts/testbed/delay-forwarder.ts \
//     --listen 10.213.0.11:20809 --to 10.213.0.1:10809 --delay-ms 5
// A round trip through it takes 2 x delay more. Each chunk is written `delay` ms after it arrived, in order;
// a direction holding more than --max-queued-bytes pauses its reader (backpressure), so memory is bounded.
// Prints LISTENING once bound; ends on SIGTERM/SIGINT or when --lifetime-s passes.
import { createServer, connect } from 'node:net'
import { pipeDelayed } from '../lib/delay-pipe.js'

function arg (name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`)
  const v = i >= 0 ? process.argv[i + 1] : fallback
  if (v === undefined) { console.error(`delay-forwarder: --${name} is required`); process.exit(2) }
  return v
}
function hostPort (s: string): { host: string, port: number } {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) }
}

const listen = hostPort(arg('listen'))
const target = hostPort(arg('to'))
const delayMs = Number(arg('delay-ms'))
const maxQueuedBytes = Number(arg('max-queued-bytes', String(8 * 1024 * 1024)))
const maxConns = Number(arg('max-conns', '1024'))
const lifetimeMs = Number(arg('lifetime-s', '7200')) * 1000
if (!(delayMs >= 0) || !(maxQueuedBytes > 0)) { console.error('delay-forwarder: bad --delay-ms or --max-queued-bytes'); process.exit(2) }

let conns = 0
const server = createServer((client) => {
  if (conns >= maxConns) { client.destroy(); return }
  conns++
  const upstream = connect(target)
  client.setNoDelay(true)
  upstream.setNoDelay(true)
  const close = (): void => { client.destroy(); upstream.destroy() }
  client.on('error', close)
  upstream.on('error', close)
  // A clean end travels through the delay queue (pipeDelayed ends the other side once it drained); only
  // errors cut both sides at once.
  client.on('close', () => { conns-- })
  pipeDelayed(client, upstream, delayMs, maxQueuedBytes)
  pipeDelayed(upstream, client, delayMs, maxQueuedBytes)
})
server.listen(listen.port, listen.host, () => { console.log('LISTENING') })
const stop = (): void => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
setTimeout(stop, lifetimeMs).unref()
