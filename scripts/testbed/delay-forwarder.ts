// A userspace TCP forwarder that adds a fixed one-way delay in each direction (this kernel has no netem).
// Run it in the namespace of the side that should see the latency, and point that side's client at it:
//   ip netns exec vmtb-h1 node --import tsx scripts/testbed/delay-forwarder.ts \
//     --listen 10.213.0.11:20809 --to 10.213.0.1:10809 --delay-ms 5
// A round trip through it takes 2 x delay more. Each chunk is written `delay` ms after it arrived, in order;
// a direction holding more than --max-queued-bytes pauses its reader (backpressure), so memory is bounded.
// Prints LISTENING once bound; ends on SIGTERM/SIGINT or when --lifetime-s passes.
import { createServer, connect, type Socket } from 'node:net'

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

/** Delays everything read from `from` by delayMs before writing it to `to`, preserving order. */
function pipeDelayed (from: Socket, to: Socket): void {
  const queue: Array<{ due: number, data: Buffer }> = []
  let queued = 0
  let timer: NodeJS.Timeout | undefined
  let ended = false
  const flush = (): void => {
    timer = undefined
    const now = performance.now()
    while (queue.length > 0 && queue[0].due <= now) {
      const { data } = queue.shift() as { due: number, data: Buffer }
      queued -= data.length
      to.write(data)
    }
    if (queued <= maxQueuedBytes / 2 && from.isPaused()) from.resume()
    if (queue.length > 0) timer = setTimeout(flush, Math.max(0, queue[0].due - performance.now()))
    else if (ended) to.end()
  }
  from.on('data', (data: Buffer) => {
    queue.push({ due: performance.now() + delayMs, data })
    queued += data.length
    if (queued > maxQueuedBytes) from.pause()
    timer ??= setTimeout(flush, delayMs)
  })
  from.on('end', () => { ended = true; if (queue.length === 0 && timer === undefined) to.end() })
}

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
  pipeDelayed(client, upstream)
  pipeDelayed(upstream, client)
})
server.listen(listen.port, listen.host, () => { console.log('LISTENING') })
const stop = (): void => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
setTimeout(stop, lifetimeMs).unref()
