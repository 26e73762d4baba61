// The overlay the snapshot store writes itself is the file qemu-img writes, byte for byte, over the range of
// sizes an image can have (unaligned, one L2 table, several, an L1 table of two clusters), and qemu-img
// check finds nothing wrong in it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import { Qcow2OverlayError, qcow2OverlayBytes, writeQcow2OverlaySync } from '../../src/blockstack/qcow2-overlay.js'

const SIZES = [0, 1, 1000, 512, 1024 ** 2, 1024 ** 3, 1024 ** 3 + 1, 512 * 1024 ** 2 * 3 + 4096, 5_000_000_000_000]

test('the overlay is byte for byte what qemu-img create -u writes, and qemu-img check passes', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmt-qcow2-'))
  try {
    for (const [i, size] of SIZES.entries()) {
      const backing = i % 2 === 0 ? `nbd+unix:///img${i}?socket=${join(dir, 'nbd.sock')}` : `nbd+unix:///a-longer-image-name-${'x'.repeat(i * 20)}?socket=/run/vmthunderd/nbd.sock`
      const theirs = join(dir, `q${i}.qcow2`)
      const ours = join(dir, `o${i}.qcow2`)
      await execa('qemu-img', ['create', '-q', '-u', '-f', 'qcow2', '-F', 'raw', '-b', backing, theirs, String(size)])
      writeQcow2OverlaySync(ours, size, backing)
      const [a, b] = [await readFile(theirs), await readFile(ours)]
      assert.equal(b.length, a.length, `size ${size}: file length`)
      assert.ok(a.equals(b), `size ${size}: bytes differ at ${a.findIndex((x, k) => x !== b[k])}`)
      // Checked without opening the backing (no NBD server here): the overlay's own metadata.
      const alone = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: ours }, backing: null })}`
      await execa('qemu-img', ['check', '-q', alone])
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', alone])).stdout)
      assert.equal(info['virtual-size'], Math.ceil(size / 512) * 512)
      assert.equal(info['backing-filename'], backing)
      assert.equal(info['backing-filename-format'], 'raw')
    }
    // It never replaces a file.
    assert.throws(() => { writeQcow2OverlaySync(join(dir, 'o0.qcow2'), 1024, 'nbd+unix:///x') }, { code: 'EEXIST' })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('bad overlay parameters get a typed error', () => {
  assert.throws(() => qcow2OverlayBytes(-1, 'nbd+unix:///x'), Qcow2OverlayError)
  assert.throws(() => qcow2OverlayBytes(1.5, 'nbd+unix:///x'), Qcow2OverlayError)
  assert.throws(() => qcow2OverlayBytes(1024, ''), Qcow2OverlayError)
  assert.throws(() => qcow2OverlayBytes(1024, 'x'.repeat(1024)), Qcow2OverlayError)
  assert.throws(() => qcow2OverlayBytes(2 ** 49, 'nbd+unix:///x'), Qcow2OverlayError)
})
