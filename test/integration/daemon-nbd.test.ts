// One daemon, real NBD clients: nbdinfo, nbdcopy, qemu-img, nbdsh, qemu-io; state across a restart.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File, readRange } from '../helpers/images.js'

const MiB = 1024 * 1024
// nbdsh is Python; Debian's python3-libnbd is for Debian's python3, which a pyenv python on PATH would hide.
const NBDSH = { env: { PATH: `/usr/bin:${process.env.PATH ?? ''}` } }
let dir: string
let image: string
let imageSha: string
let daemon: TestDaemon

before(async () => {
  dir = await makeTempDir()
  image = join(dir, 'base.raw')
  // 48 MiB with data in three regions and holes between (zero blocks are never copied or fetched).
  await makeImage(image, 48 * MiB + 12345, [[0, 3 * MiB], [10 * MiB + 777, 5 * MiB], [40 * MiB, 8 * MiB + 12345]])
  imageSha = await sha256File(image)
  daemon = await startDaemon({ dir, allowImageDirs: [dir] })
  const registered = await daemon.call('image.register', { id: 'base', path: image })
  assert.equal(registered.sizeBytes, 48 * MiB + 12345)
  assert.equal(registered.heldFraction, 1)
})

after(async () => {
  await daemon?.stop()
  await removeDir(dir)
})

test('nbdinfo lists and describes the export', { timeout: 60_000 }, async () => {
  const list = await execa('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${daemon.nbdSocket}`])
  const exports = JSON.parse(list.stdout).exports
  assert.deepEqual(exports.map((e: any) => e['export-name']), ['base'])
  const info = JSON.parse((await execa('nbdinfo', ['--json', daemon.nbdUri('base')])).stdout)
  assert.equal(info.exports[0]['export-size'], 48 * MiB + 12345)
  assert.equal(info.exports[0].is_read_only, true)
})

test('nbdcopy of the whole export equals the source; qemu-img compare passes', { timeout: 120_000 }, async () => {
  const out = join(dir, 'copy.raw')
  await execa('nbdcopy', [daemon.nbdUri('base'), out])
  assert.equal(await sha256File(out), imageSha)
  const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', daemon.nbdUri('base'), image], { reject: false })
  assert.equal(compare.exitCode, 0, compare.stdout + compare.stderr)
})

test('random reads through nbdsh match the source', { timeout: 60_000 }, async () => {
  const script = [
    'import hashlib, random',
    'random.seed(7)',
    'size = h.get_size()',
    'for i in range(300):',
    '  off = random.randrange(0, size - 1)',
    '  n = min(random.randrange(1, 300000), size - off)',
    '  print(off, n, hashlib.sha256(h.pread(n, off)).hexdigest())'
  ].join('\n')
  const { stdout } = await execa('nbdsh', ['-u', daemon.nbdUri('base'), '-c', script], NBDSH)
  const lines = stdout.trim().split('\n')
  assert.equal(lines.length, 300)
  for (const line of lines) {
    const [off, n, hex] = line.split(' ')
    const want = createHash('sha256').update(await readRange(image, Number(off), Number(n))).digest('hex')
    assert.equal(hex, want, `read of ${n} at ${off}`)
  }
})

test('writes are refused on the export and land only in an instance overlay', { timeout: 120_000 }, async () => {
  const direct = await execa('nbdsh', ['-u', daemon.nbdUri('base'), '-c', 'h.pwrite(b"x" * 512, 0)'], { ...NBDSH, reject: false })
  assert.notEqual(direct.exitCode, 0)
  assert.match(direct.stderr, /EPERM|read-only|not permitted/i)

  const vm = await daemon.call('instance.create', { name: 'vm-1', image: 'base' })
  assert.match(vm.path, /vm-1\.qcow2$/)
  const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', vm.path])).stdout)
  assert.equal(info['backing-filename'], daemon.nbdUri('base'))
  await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 2M', vm.path])
  const readBack = await execa('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 1M 2M', vm.path], { reject: false })
  assert.equal(readBack.exitCode, 0)
  assert.doesNotMatch(readBack.stdout, /Pattern verification failed/)
  // Unwritten parts of the overlay read the base; the base itself is unchanged.
  const cmp = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', vm.path, image], { reject: false })
  assert.equal(cmp.exitCode, 1, 'the overlay differs from the base where the VM wrote')
  const copy = join(dir, 'after-write.raw')
  await execa('nbdcopy', [daemon.nbdUri('base'), copy])
  assert.equal(await sha256File(copy), imageSha)
  assert.equal(await sha256File(image), imageSha)

  const list = await daemon.call('instance.list')
  assert.deepEqual(list.map((i: any) => i.name), ['vm-1'])
  await assert.rejects(daemon.call('image.remove', { id: 'base' }), { code: 1003 })
})

test('images and instances survive a restart; the NBD URI stays the same', { timeout: 120_000 }, async () => {
  const before = await daemon.call('image.list')
  assert.equal(await daemon.stop(), 0)
  daemon = await startDaemon({ dir, allowImageDirs: [dir] })
  const afterList = await daemon.call('image.list')
  assert.deepEqual(afterList.map((i: any) => [i.id, i.root, i.nbd, i.heldFraction]), before.map((i: any) => [i.id, i.root, i.nbd, i.heldFraction]))
  const instances = await daemon.call('instance.list')
  assert.deepEqual(instances.map((i: any) => i.name), ['vm-1'])
  // The overlay made before the restart still reads through to the (restarted) export.
  const cmp = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', instances[0].path, image], { reject: false })
  assert.equal(cmp.exitCode, 1)
  const r = await execa('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 0 20M 1M', instances[0].path], { reject: false })
  assert.equal(r.exitCode, 0)
  assert.doesNotMatch(r.stdout, /Pattern verification failed/)
  await daemon.call('instance.destroy', { name: 'vm-1' })
  assert.deepEqual(await daemon.call('instance.list'), [])
  await daemon.call('image.remove', { id: 'base' })
  assert.deepEqual(await daemon.call('image.list'), [])
})
