// A read-only NbdExport backed by a local file, for tests and benchmarks (the daemon serves the block cache).
// Reads go through libuv's thread pool (fs.read) into pooled buffers that the server hands back after the
// reply is written (BufferReleasingExport). Reads up to `syncReadMaxBytes` may use readSync on the event loop
// instead: with a warm page cache that skips two thread hand-offs per read and measured ~2.5x the random
// 4 KiB IOPS at QD32 and ~3x at QD1 (scripts/bench-nbd.sh), but a cold read would stall every connection,
// so it is off by default.

import { close, fstat, open, read, readSync } from 'node:fs'
import { promisify } from 'node:util'
import type { ExportProvider, NbdExport } from '../types.js'
import { BufferPool, type BufferReleasingExport } from './buffer-pool.js'

const openAsync = promisify(open)
const fstatAsync = promisify(fstat)
const closeAsync = promisify(close)

/** Thread-pool reads by default: a cold page cache would stall the event loop under readSync. */
export const DEFAULT_SYNC_READ_MAX_BYTES = 0

export interface FileExportOptions {
  name: string
  description?: string
  /** Reads of at most this many bytes use readSync. 0 disables. */
  syncReadMaxBytes?: number
  /** Reuse read buffers (released by the server after the reply is written). Default true. */
  pooledBuffers?: boolean
}

export interface FileExport extends NbdExport, BufferReleasingExport {
  close: () => Promise<void>
}

export class ShortFileReadError extends Error {
  override name = 'ShortFileReadError'
}

export async function openFileExport (path: string, options: FileExportOptions): Promise<FileExport> {
  const fd = await openAsync(path, 'r')
  let sizeBytes: number
  try {
    sizeBytes = (await fstatAsync(fd)).size
  } catch (err) {
    await closeAsync(fd)
    throw err
  }
  const syncReadMaxBytes = options.syncReadMaxBytes ?? DEFAULT_SYNC_READ_MAX_BYTES
  let closed = false
  const pool = (options.pooledBuffers ?? true) ? new BufferPool() : undefined
  const allocate = (length: number): Buffer => pool?.acquire(length) ?? Buffer.allocUnsafe(length)

  function readAsync (offset: number, length: number): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      const buf = allocate(length)
      const fail = (err: Error): void => {
        pool?.release(buf)
        reject(err)
      }
      const step = (filled: number): void => {
        read(fd, buf, filled, length - filled, offset + filled, (err, n) => {
          if (err !== null) return fail(err)
          if (n === 0) return fail(new ShortFileReadError(`file ended at ${offset + filled}, wanted ${offset + length}`))
          if (filled + n < length) return step(filled + n)
          resolve(buf)
        })
      }
      step(0)
    })
  }

  function readNow (offset: number, length: number): Uint8Array {
    const buf = allocate(length)
    let filled = 0
    try {
      while (filled < length) {
        const n = readSync(fd, buf, filled, length - filled, offset + filled)
        if (n === 0) throw new ShortFileReadError(`file ended at ${offset + filled}, wanted ${offset + length}`)
        filled += n
      }
    } catch (err) {
      pool?.release(buf)
      throw err
    }
    return buf
  }

  return {
    name: options.name,
    description: options.description,
    sizeBytes,
    read (offset, length, signal) {
      if (signal.aborted) return Promise.reject(signal.reason)
      if (closed) return Promise.reject(new Error('file export closed'))
      if (length <= syncReadMaxBytes) {
        try {
          return Promise.resolve(readNow(offset, length))
        } catch (err) {
          return Promise.reject(err)
        }
      }
      return readAsync(offset, length)
    },
    releaseBuffer (data) {
      pool?.release(data)
    },
    async close () {
      if (closed) return
      closed = true
      await closeAsync(fd)
    }
  }
}

/** An ExportProvider over a fixed set of exports. */
export function staticExportProvider (exports: readonly NbdExport[]): ExportProvider {
  const byName = new Map(exports.map(e => [e.name, e]))
  return {
    list: () => [...byName.keys()],
    get: (name) => byName.get(name)
  }
}
