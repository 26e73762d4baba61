// `vmthunderctl image register`: a progress bar while the daemon hashes the image and copies it into its cache.
// image.register answers only when it is done (one request, one response), so the CLI polls
// image.register.status on other connections meanwhile. On a terminal the bar is redrawn in place; otherwise
// (logs, CI) a line is printed each time the phase or the whole percent changes, at most once per interval.

import { setTimeout as sleep } from 'node:timers/promises'
import type { ImageRegisterStatus, RegistrationProgress } from '../rpc/types.js'
import { formatBytes } from './format.js'
import { bar, formatDuration, RateMeter } from './progress.js'

const PHASES: Array<RegistrationProgress['phase']> = ['hashing', 'copying']

/**
 * Bytes read so far across both phases (each reads the whole file), so that one rate and one ETA cover the
 * whole registration rather than restarting with the copy.
 */
function readBytes (p: RegistrationProgress): number {
  return PHASES.indexOf(p.phase) * p.totalBytes + p.doneBytes
}

/** "registering base 1/2 hashing [####....]  33.3%  85.3 MiB of 256 MiB  142 MiB/s  eta 4s" */
export function registerLine (p: RegistrationProgress, bytesPerSecond: number | undefined, etaMs: number | undefined): string {
  const fraction = p.totalBytes > 0 ? p.doneBytes / p.totalBytes : 0
  const step = `${PHASES.indexOf(p.phase) + 1}/${PHASES.length} ${p.phase.padEnd(7)}`
  const rate = bytesPerSecond === undefined ? '-' : `${formatBytes(bytesPerSecond)}/s`
  const eta = etaMs === undefined ? '?' : formatDuration(etaMs)
  return `registering ${p.imageId} ${step} ${bar(fraction)} ${(fraction * 100).toFixed(1).padStart(5)}%  ${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)}  ${rate}  eta ${eta}`
}

/**
 * Resolves (or rejects) as `register` does, drawing the registration's progress from `status` until then.
 * A status that fails (a daemon older than image.register.status) stops the drawing, not the registration.
 */
export async function showRegisterProgress<T> (options: {
  register: Promise<T>
  status: () => Promise<ImageRegisterStatus>
  out: (text: string) => void
  tty: boolean
  intervalMs: number
  signal?: AbortSignal
}): Promise<T> {
  const settled = new AbortController()
  const registered = options.register.finally(() => settled.abort())
  const signal = options.signal === undefined ? settled.signal : AbortSignal.any([settled.signal, options.signal])
  const drawing = (async () => {
    const meter = new RateMeter(10_000)
    let lastKey = ''
    let drawn = false
    try {
      while (!signal.aborted) {
        const progress = await options.status()
        if (signal.aborted) break
        if (progress !== null) {
          const now = Date.now()
          meter.add(now, readBytes(progress))
          const line = registerLine(progress, meter.perSecond(), meter.etaMs(PHASES.length * progress.totalBytes))
          // Off a terminal, a line per whole percent (or phase) moved: a log gets a trace, not a flood.
          const key = `${progress.phase} ${Math.floor(progress.doneBytes * 100 / Math.max(1, progress.totalBytes))}`
          if (options.tty) options.out(`\r\x1b[2K${line}`)
          else if (key !== lastKey) options.out(line + '\n')
          lastKey = key
          drawn = true
        }
        await sleep(options.intervalMs, undefined, { signal }).catch(() => {})
      }
    } catch {
      // No progress to show; the registration goes on and its answer is what counts.
    } finally {
      if (options.tty && drawn) options.out('\r\x1b[2K')
    }
  })()
  try {
    return await registered
  } finally {
    await drawing
  }
}
