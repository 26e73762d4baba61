// NBD read latency per image: a timer around each export read, into a prom-client histogram. The one
// per-read cost of the metrics (a clock read and a bucket increment), paid only when metrics are on.

import type { Histogram } from 'prom-client'
import type { NbdExport } from '../blockstack/types.js'

/** Seconds: a local hit is tens of microseconds, a fetch from a far peer tens of milliseconds or more. */
export const READ_LATENCY_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10]

export function timedExport<E extends NbdExport> (exp: E, histogram: Histogram<'image'>): E {
  const child = histogram.labels({ image: exp.name })
  const read = exp.read
  return {
    ...exp,
    read: async (offset: number, length: number, signal: AbortSignal) => {
      const start = process.hrtime.bigint()
      try {
        return await read(offset, length, signal)
      } finally {
        child.observe(Number(process.hrtime.bigint() - start) / 1e9)
      }
    }
  }
}
