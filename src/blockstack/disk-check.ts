// Start-up check that a directory can take writes: a read-only or full data dir otherwise shows up later as
// an obscure failure ("Database failed to open") or, worse, as blocks that are fetched and never kept.

import { open, unlink } from 'node:fs/promises'
import { join } from 'node:path'

export class DataDirNotWritableError extends Error {
  override name = 'DataDirNotWritableError'
  constructor (message: string, readonly code: string | undefined) { super(message) }
}

const REASONS: Record<string, string> = {
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EIO: 'I/O error'
}

/** Creates, writes, syncs and removes a probe file in `dir`; throws DataDirNotWritableError when it cannot. */
export async function assertWritableDir (dir: string, what = 'data dir'): Promise<void> {
  const probe = join(dir, `.write-probe-${process.pid}`)
  try {
    const fh = await open(probe, 'w', 0o600)
    try {
      await fh.write(new Uint8Array(512))
      await fh.sync()
    } finally {
      await fh.close()
    }
    await unlink(probe)
  } catch (err) {
    await unlink(probe).catch(() => {})
    const code = (err as NodeJS.ErrnoException).code
    const reason = (code !== undefined ? REASONS[code] : undefined) ?? (err as Error).message
    throw new DataDirNotWritableError(`${what} ${dir} is not writable: ${reason}${code !== undefined ? ` (${code})` : ''}`, code)
  }
}
