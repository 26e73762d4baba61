// Shared by the storage trials (bit rot, full disk, crash trials, soak): agent config files and a bad disk.

import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { writeAgentConfigFile } from '../../scripts/lib/trial-utils.js'

/** Writes an agent config (prefetch off, quick heartbeats, `extra` on top) into `dir`; returns its path. */
export async function writeAgentConfig (dir: string, extra: Record<string, unknown> = {}): Promise<string> {
  return await writeAgentConfigFile(join(dir, 'agent.json'), dir, { prefetch: { enabled: false }, p2p: { heartbeatMs: 500 }, ...extra })
}

/** Flips one byte in every `strideBytes` of a file, as a bad disk would; returns the offsets flipped. */
export async function flipBytes (path: string, strideBytes: number, skew = 4321): Promise<number[]> {
  const fh = await open(path, 'r+')
  try {
    const { size } = await fh.stat()
    const flipped: number[] = []
    const one = Buffer.alloc(1)
    for (let at = skew % strideBytes; at < size; at += strideBytes) {
      await fh.read(one, 0, 1, at)
      one[0] ^= 0xa5
      await fh.write(one, 0, 1, at)
      flipped.push(at)
    }
    await fh.sync()
    return flipped
  } finally { await fh.close() }
}

/** Counts bytes that differ between two equal-length files. */
export async function differingBytes (a: string, b: string): Promise<number> {
  const [fa, fb] = [await open(a, 'r'), await open(b, 'r')]
  try {
    const [sa, sb] = [(await fa.stat()).size, (await fb.stat()).size]
    let diff = Math.abs(sa - sb)
    const chunk = 1024 * 1024
    const ba = Buffer.alloc(chunk); const bb = Buffer.alloc(chunk)
    for (let at = 0; at < Math.min(sa, sb); at += chunk) {
      const n = Math.min(chunk, Math.min(sa, sb) - at)
      await fa.read(ba, 0, n, at); await fb.read(bb, 0, n, at)
      for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) diff++
    }
    return diff
  } finally { await fa.close(); await fb.close() }
}
