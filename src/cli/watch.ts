// `vmthunderctl status --watch`: the agent's images redrawn every interval, with rates from the difference
// between frames: held, depth, parents, children, receive/send/read rates, prefetch.

import type { ImageStatus, NodeStatus } from '../rpc/types.js'
import { formatBytes, table } from './format.js'
import { bar, formatDuration } from './progress.js'

const CLEAR = '\x1b[H\x1b[2J'

interface Previous { atMs: number, byImage: Map<string, { rx: number, tx: number, read: number }> }

function short (peerId: string): string {
  return peerId.slice(-6)
}

function rate (now: number, before: number | undefined, ms: number): string {
  if (before === undefined || ms <= 0) return '-'
  return `${formatBytes(Math.max(0, now - before) * 1000 / ms)}/s`
}

function prefetchText (i: ImageStatus): string {
  const p = i.prefetch
  if (p === undefined) return '-'
  if (p.mode === 'done' || p.blocksRemaining === 0) return 'done'
  return `${p.mode} ${p.blocksRemaining} left${p.etaMs === null ? '' : ` eta ${formatDuration(p.etaMs)}`}`
}

/** One frame; `previous` (mutated) carries counters for the rates. */
export function renderFrame (status: NodeStatus, previous: Previous | undefined, atMs: number): { text: string, next: Previous } {
  const next: Previous = { atMs, byImage: new Map() }
  const ms = previous === undefined ? 0 : atMs - previous.atMs
  const rows = Object.values(status.images).sort((a, b) => a.id.localeCompare(b.id)).map(i => {
    const counters = { rx: i.bytesReceived ?? i.cache.fetchedBytes, tx: i.bytesSent ?? 0, read: i.cache.readBytes }
    next.byImage.set(i.id, counters)
    const before = previous?.byImage.get(i.id)
    const parents = i.parents ?? []
    return [
      i.id,
      `${bar(i.heldFraction, 16)} ${(i.heldFraction * 100).toFixed(1).padStart(5)}%`,
      i.depth === undefined || i.depth === null ? (i.seed ? '0' : '-') : String(i.depth),
      parents.length === 0 ? '-' : `${parents.length}: ${parents.map(short).join(',')}`,
      String(i.children?.length ?? 0),
      rate(counters.rx, before?.rx, ms),
      rate(counters.tx, before?.tx, ms),
      rate(counters.read, before?.read, ms),
      String(i.instances.length),
      prefetchText(i)
    ]
  })
  const head = `vmthunderd ${short(status.peerId)}  up ${formatDuration(status.uptimeMs)}  peers ${status.p2p.enabled ? (status.p2p.peers ?? 0) : 'off'}  instances ${status.instances}  ${new Date(atMs).toISOString().slice(11, 19)}\n`
  const body = rows.length === 0
    ? 'no images\n'
    : table(['IMAGE', 'HELD', 'DEPTH', 'PARENTS', 'CHILDREN', 'RECV', 'SENT', 'READ', 'VMS', 'PREFETCH'], rows)
  return { text: head + body, next }
}

export async function watchStatus (options: {
  status: () => Promise<NodeStatus>
  out: (text: string) => void
  intervalMs: number
  /** Frames to draw; the watch also ends on `signal`. */
  count: number
  tty: boolean
  signal: AbortSignal
}): Promise<void> {
  let previous: Previous | undefined
  for (let frame = 0; frame < options.count && !options.signal.aborted; frame++) {
    const status = await options.status()
    const { text, next } = renderFrame(status, previous, Date.now())
    previous = next
    options.out(options.tty ? CLEAR + text : (frame === 0 ? '' : '\n') + text)
    if (frame + 1 < options.count) {
      await new Promise<void>(resolve => {
        const timer = setTimeout(done, options.intervalMs)
        function done (): void { clearTimeout(timer); options.signal.removeEventListener('abort', done); resolve() }
        options.signal.addEventListener('abort', done, { once: true })
      })
    }
  }
}
