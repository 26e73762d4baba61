// An image registered from a block device (a loop device over a file): stat says 0 bytes for a device, so
// the size comes from sysfs; the export must then serve exactly the device's bytes. Needs root and a free
// loop device; skipped with the reason where the machine has none.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { deviceNumbers } from '../../src/blockstack/device-size.js'

const MiB = 1024 * 1024
const IMAGE_BYTES = 12 * MiB + 4096 // not a whole number of blocks: the last block is short
let dir: string
let loop: string | undefined
let daemon: TestDaemon | undefined
let skipReason: string | undefined

before(async () => {
  dir = await makeTempDir('vmt-blkdev')
  const file = join(dir, 'backing.raw')
  await makeImage(file, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  const attached = await execa('losetup', ['--find', '--show', file], { reject: false })
  if (attached.exitCode !== 0) skipReason = `no loop device here: ${attached.stderr.trim()}`
  else loop = attached.stdout.trim()
}, { timeout: 60_000 })

after(async () => {
  await daemon?.stop()
  if (loop !== undefined) await execa('losetup', ['-d', loop], { reject: false })
  await removeDir(dir)
}, { timeout: 60_000 })

test('device numbers follow glibc (major 8, minor 17 and a large minor)', () => {
  assert.deepEqual(deviceNumbers(0x811n), { major: 8, minor: 17 })
  // major 259 (NVMe), minor 0x12345: the minor's high bits sit above the major's
  assert.deepEqual(deviceNumbers(0x45n | (259n << 8n) | (0x12300n << 12n)), { major: 259, minor: 0x12345 })
})

test('image.register of a block device: its size from sysfs, and the export serves exactly its bytes', { timeout: 120_000 }, async (t) => {
  if (loop === undefined) { t.skip(skipReason); return }
  daemon = await startDaemon({ dir: join(dir, 'agent'), args: ['--listen', '/ip4/127.0.0.1/tcp/0'], allowImageDirs: ['/dev'] })
  const image = await daemon.call('image.register', { id: 'dev', path: loop })
  assert.equal(image.sizeBytes, IMAGE_BYTES, 'the device size, not stat\'s 0')
  const copy = join(dir, 'copy.raw')
  await execa('nbdcopy', [daemon.nbdUri('dev'), copy], { timeout: 60_000 })
  assert.equal(await sha256File(copy), await sha256File(join(dir, 'backing.raw')))
})
