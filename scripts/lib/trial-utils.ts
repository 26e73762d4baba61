// Small pieces shared by the storage trials (crash trials, soak, their tests): a seeded PRNG, percentiles,
// agent config files, and /proc figures of a process.

import { writeFile, readFile, readdir } from 'node:fs/promises'
import { defaultConfig } from '../../config/defaults.js'

/** mulberry32: a small seeded PRNG, so a trial run is reproduced from its seed. */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function percentile (values: number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
}

/**
 * Writes an agent config file. Images registered by the trials live under `allowedDir`: where the config
 * knows `images.allowedDirs` (image.register only under operator-set directories) it is set to that dir;
 * older configs refuse unknown fields, so it is added only when the field exists.
 */
export async function writeAgentConfigFile (path: string, allowedDir: string, fields: Record<string, any>): Promise<string> {
  const config = { ...fields }
  if ('images' in (defaultConfig() as unknown as Record<string, unknown>)) config.images = { ...(config.images ?? {}), allowedDirs: [allowedDir] }
  await writeFile(path, JSON.stringify(config))
  return path
}

export interface ProcessFigures {
  rssBytes: number
  openFds: number
  cpuSeconds: number
}

/** RSS, open fds and CPU-seconds (user+system) of a live process, from /proc. */
export async function processFigures (pid: number): Promise<ProcessFigures> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  const fds = (await readdir(`/proc/${pid}/fd`)).length
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(rest[11]) + Number(rest[12])
  return { rssBytes: rssKiB * 1024, openFds: fds, cpuSeconds: ticks / 100 }
}
