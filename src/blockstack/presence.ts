// Persistent record of which blocks of an image are present, as bitmap chunks in level. A chunk covers
// CHUNK_BLOCKS blocks, so a 1 GiB image at 64 KiB blocks is 4 small values and a commit rewrites only the
// chunks it touched.

import type { Bitmap } from './bitmap.js'

export const CHUNK_BLOCKS = 4096
const CHUNK_BYTES = CHUNK_BLOCKS / 8

/** The part of a level (sub)level the presence store uses. */
export interface ChunkDb {
  iterator: (options?: Record<string, unknown>) => AsyncIterable<[string, Uint8Array]>
  batch: (ops: Array<{ type: 'put', key: string, value: Uint8Array } | { type: 'del', key: string }>) => Promise<void>
  clear: () => Promise<void>
}

export interface PresenceStore {
  load: (blockCount: number) => Promise<Uint8Array>
  /** Persists the chunks that contain `changed` blocks, from the bitmap's current state. */
  save: (bitmap: Bitmap, changed: readonly number[]) => Promise<void>
  clear: () => Promise<void>
}

function chunkKey (chunk: number): string {
  return chunk.toString(16).padStart(8, '0')
}

export function levelPresenceStore (db: ChunkDb): PresenceStore {
  return {
    async load (blockCount) {
      const bytes = new Uint8Array(Math.ceil(blockCount / 8))
      for await (const [key, value] of db.iterator()) {
        const chunk = Number.parseInt(key, 16)
        const at = chunk * CHUNK_BYTES
        if (!Number.isInteger(chunk) || at >= bytes.length) continue
        bytes.set(value.subarray(0, Math.min(value.byteLength, bytes.length - at)), at)
      }
      return bytes
    },
    async save (bitmap, changed) {
      const chunks = new Set<number>()
      for (const index of changed) chunks.add(Math.floor(index / CHUNK_BLOCKS))
      await db.batch([...chunks].map(chunk => ({
        type: 'put' as const,
        key: chunkKey(chunk),
        value: bitmap.bits.slice(chunk * CHUNK_BYTES, (chunk + 1) * CHUNK_BYTES)
      })))
    },
    async clear () {
      await db.clear()
    }
  }
}

/** In-memory presence store, for tests and for the simulator. */
export function memoryPresenceStore (): PresenceStore & { chunks: Map<number, Uint8Array> } {
  const chunks = new Map<number, Uint8Array>()
  return {
    chunks,
    async load (blockCount) {
      const bytes = new Uint8Array(Math.ceil(blockCount / 8))
      for (const [chunk, value] of chunks) {
        const at = chunk * CHUNK_BYTES
        if (at < bytes.length) bytes.set(value.subarray(0, Math.min(value.byteLength, bytes.length - at)), at)
      }
      return bytes
    },
    async save (bitmap, changed) {
      for (const index of changed) {
        const chunk = Math.floor(index / CHUNK_BLOCKS)
        chunks.set(chunk, bitmap.bits.slice(chunk * CHUNK_BYTES, (chunk + 1) * CHUNK_BYTES))
      }
    },
    async clear () { chunks.clear() }
  }
}
