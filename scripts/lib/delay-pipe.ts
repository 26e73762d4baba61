// A TCP latency layer (netem is not in this kernel): everything read from one socket is written to the
// other `delayMs` later, in order, with backpressure (reading pauses while more than `maxQueuedBytes` wait).
// A clean end travels through the queue: the other side is ended once the queue drained.

import type { Socket } from 'node:net'

export function pipeDelayed (from: Socket, to: Socket, delayMs: number, maxQueuedBytes: number, onData?: (bytes: number) => void): void {
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
    onData?.(data.length)
    if (delayMs === 0) { to.write(data); return }
    queue.push({ due: performance.now() + delayMs, data })
    queued += data.length
    if (queued > maxQueuedBytes) from.pause()
    timer ??= setTimeout(flush, delayMs)
  })
  from.on('end', () => { ended = true; if (queue.length === 0 && timer === undefined) to.end() })
}
