// The size of an image source: a regular file's from stat; a block device's from sysfs, since stat reports
// 0 bytes for a block device (Linux keeps its size in /sys/dev/block/MAJOR:MINOR/size, in 512-byte sectors).

import { readFile } from 'node:fs/promises'
import type { BigIntStats, Stats } from 'node:fs'

export class DeviceSizeError extends Error {
  override name = 'DeviceSizeError'
}

/** Major and minor numbers of a device id (glibc's gnu_dev_major/gnu_dev_minor). */
export function deviceNumbers (rdev: bigint): { major: number, minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)
  return { major: Number(major), minor: Number(minor) }
}

/** Bytes of a regular file or a block device (`stat` of it, with bigint: true for a device). */
export async function sourceSizeBytes (path: string, stat: Stats | BigIntStats): Promise<number> {
  if (!stat.isBlockDevice()) return Number(stat.size)
  const { major, minor } = deviceNumbers(BigInt(stat.rdev))
  const sysPath = `/sys/dev/block/${major}:${minor}/size`
  let text: string
  try {
    text = await readFile(sysPath, 'utf8')
  } catch (err) {
    throw new DeviceSizeError(`cannot read the size of block device ${path} (${sysPath}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  const sectors = Number(text.trim())
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new DeviceSizeError(`block device ${path}: bad size '${text.trim()}' in ${sysPath}`)
  return sectors * 512
}
