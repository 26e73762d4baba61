// A BlockSource that reads blocks from a raw image file: the origin's source is its own image file.
// Its blocks are verified by the cache like any other source's, so a file changed after registration is
// caught, not served.

import { open, type FileHandle } from 'node:fs/promises'
import { blockLength, type Manifest } from './manifest.js'
import type { BlockSource, FetchedBlock, FetchOptions } from './types.js'

export function fileBlockSource (path: string): BlockSource & { close: () => Promise<void> } {
  let handle: Promise<FileHandle> | undefined
  return {
    async fetch (manifest: Manifest, blockIndexes: readonly number[], options: FetchOptions): Promise<FetchedBlock[]> {
      handle ??= open(path, 'r')
      const fh = await handle
      const out: FetchedBlock[] = []
      for (const index of blockIndexes) {
        options.signal.throwIfAborted()
        const length = blockLength(manifest, index)
        const data = Buffer.allocUnsafe(length)
        let done = 0
        while (done < length) {
          const { bytesRead } = await fh.read(data, done, length - done, index * manifest.blockSizeBytes + done)
          if (bytesRead === 0) break
          done += bytesRead
        }
        out.push({ index, data: data.subarray(0, done), peer: 'file' })
      }
      return out
    },
    async close () {
      if (handle !== undefined) await (await handle).close()
      handle = undefined
    }
  }
}
