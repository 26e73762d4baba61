// `vmthunderctl image preheat ID --wait`: the cluster's progress on a preheated image, from the agents'
// reports over gossip (image.preheat.status), as a bar with the agents done and an ETA. Ends when as many
// agents as subscribed when the request went out (and any more heard from) are done, failed or refused.

import type { PreheatClusterStatus, PreheatRequest } from '../rpc/types.js'
import { formatBytes } from './format.js'
import { bar, formatDuration, RateMeter } from './progress.js'

export class PreheatTimeoutError extends Error {
  override name = 'PreheatTimeoutError'
}

export function preheatLine (status: PreheatClusterStatus, expectedAgents: number, etaMs: number | undefined): string {
  const done = status.agents.filter(a => a.state === 'done').length
  const failed = status.agents.filter(a => a.state === 'failed').length
  const refused = status.agents.filter(a => a.state === 'refused').length
  const size = status.sizeBytes === null ? '' : `  ${formatBytes(status.heldFraction * status.sizeBytes * Math.max(status.agents.length, 1))} of ${formatBytes(status.sizeBytes * Math.max(status.agents.length, expectedAgents))}`
  const eta = done === status.agents.length && status.agents.length >= expectedAgents ? '' : `  eta ${etaMs === undefined ? '?' : formatDuration(etaMs)}`
  return `${status.imageId} ${bar(status.heldFraction)} ${(status.heldFraction * 100).toFixed(1).padStart(5)}%  ${done}/${Math.max(status.agents.length, expectedAgents)} agents done${failed > 0 ? `, ${failed} failed` : ''}${refused > 0 ? `, ${refused} refused (untrusted)` : ''}${size}${eta}`
}

export async function waitPreheat (options: {
  request: PreheatRequest
  status: () => Promise<PreheatClusterStatus>
  out: (text: string) => void
  tty: boolean
  intervalMs: number
  timeoutMs: number
  signal?: AbortSignal
}): Promise<PreheatClusterStatus> {
  // Subscribers of the preheat topic when the request left, plus this agent.
  const expected = options.request.subscribers + 1
  const meter = new RateMeter(15_000)
  const deadline = Date.now() + options.timeoutMs
  let lastLine = ''
  for (;;) {
    const status = await options.status()
    const now = Date.now()
    meter.add(now, status.heldFraction)
    const line = preheatLine(status, expected, meter.etaMs(1))
    if (options.tty) options.out(`\r\x1b[2K${line}`)
    else if (line !== lastLine) options.out(line + '\n')
    lastLine = line
    const settled = status.agents.length >= expected && status.agents.every(a => a.state === 'done' || a.state === 'failed' || a.state === 'refused')
    if (settled) {
      if (options.tty) options.out('\n')
      return status
    }
    if (now >= deadline) {
      if (options.tty) options.out('\n')
      throw new PreheatTimeoutError(`preheat of ${status.imageId} not finished in ${formatDuration(options.timeoutMs)}: ${status.agents.filter(a => a.state === 'done').length}/${Math.max(expected, status.agents.length)} agents done`)
    }
    options.signal?.throwIfAborted()
    await new Promise(resolve => setTimeout(resolve, Math.min(options.intervalMs, Math.max(0, deadline - now))))
  }
}
