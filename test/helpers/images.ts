// Test images: sparse raw files with random data in some regions, and their SHA-256.

import { open } from 'node:fs/promises'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'

/** Makes a sparse raw image of `sizeBytes` with random data at the given [offset, length) regions. */
export async function makeImage (path: string, sizeBytes: number, regions: Array<[number, number]>): Promise<void> {
  const fh = await open(path, 'w')
  try {
    await fh.truncate(sizeBytes)
    for (const [offset, length] of regions) {
      for (let done = 0; done < length; done += 4 * 1024 * 1024) {
        const n = Math.min(4 * 1024 * 1024, length - done)
        await fh.write(randomBytes(n), 0, n, offset + done)
      }
    }
  } finally {
    await fh.close()
  }
}

export async function sha256File (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

export async function readRange (path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.alloc(length)
    await fh.read(buf, 0, length, offset)
    return buf
  } finally {
    await fh.close()
  }
}
