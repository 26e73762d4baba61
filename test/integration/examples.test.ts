// examples/: the libvirt domain validates against libvirt's schema (virt-xml-validate) and describes the
// disk chain a real daemon makes (overlay path, NBD export, socket); the driver guide's JSON-RPC requests,
// sent as written to a real daemon, do create -> boot (a read through the overlay) -> destroy.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join, dirname, basename } from 'node:path'
import { readFile } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, ROOT } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { exchange } from '../../src/rpc/client.js'
import { defaultConfig } from '../../config/defaults.js'

const DOMAIN = join(ROOT, 'examples', 'libvirt-domain.xml')
const GUIDE = join(ROOT, 'examples', 'driver-guide.md')

test('the libvirt domain passes virt-xml-validate', { timeout: 60_000 }, async () => {
  const result = await execa('virt-xml-validate', [DOMAIN, 'domain'], { reject: false })
  assert.equal(result.exitCode, 0, result.stdout + result.stderr)
})

test('the domain\'s disk chain is the one the daemon makes with its default paths', { timeout: 90_000 }, async () => {
  const xml = await readFile(DOMAIN, 'utf8')
  const overlay = /<source file='([^']+)'\/>/.exec(xml)![1]
  const exportName = /<source protocol='nbd' name='([^']+)'>/.exec(xml)![1]
  const socket = /<host transport='unix' socket='([^']+)'\/>/.exec(xml)![1]
  const defaults = defaultConfig()
  assert.equal(socket, defaults.nbd.socket)
  assert.equal(dirname(overlay), defaults.instancesDir)
  const imageDir = await makeTempDir()
  const daemon = await startDaemon({ dir: imageDir, allowImageDirs: [imageDir] })
  try {
    const image = join(daemon.dir, 'image.raw')
    await makeImage(image, 8 * 1024 * 1024, [[0, 1024 * 1024]])
    await daemon.call('image.register', { id: exportName, path: image })
    const created = await daemon.call('instance.create', { name: 'vm1', image: exportName })
    assert.equal(basename(created.path), basename(overlay))
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', created.path])).stdout)
    assert.equal(info.format, 'qcow2')
    // The XML's backingStore is this NBD URI, with the daemon's socket in place of the default one.
    assert.equal(info['backing-filename'], `nbd+unix:///${exportName}?socket=${daemon.nbdSocket}`)
  } finally {
    await daemon.stop()
    await removeDir(daemon.dir)
  }
})

test('the driver guide\'s requests, as written, create, boot from and destroy an instance', { timeout: 90_000 }, async () => {
  const requests = (await readFile(GUIDE, 'utf8')).split('\n').filter(l => l.startsWith('{"jsonrpc"'))
  assert.deepEqual(requests.map(r => JSON.parse(r).method), ['image.register', 'instance.create', 'node.status', 'instance.destroy'])
  const imageDir = await makeTempDir()
  const daemon = await startDaemon({ dir: imageDir, allowImageDirs: [imageDir] })
  try {
    const image = join(daemon.dir, 'debian12.raw')
    await makeImage(image, 8 * 1024 * 1024, [[0, 2 * 1024 * 1024]])
    let overlay = ''
    for (const line of requests) {
      // The one site-specific value: where the image file is.
      const response = await exchange(daemon.socket, line.replace('/srv/images/debian12.raw', image) + '\n')
      assert.equal(response.error, undefined, `${line}: ${JSON.stringify(response.error)}`)
      assert.equal(response.id, JSON.parse(line).id)
      if (JSON.parse(line).method === 'instance.create') {
        overlay = response.result.path
        // Boot stand-in: the hypervisor reads the whole disk through the overlay and its NBD backing file.
        const copy = join(daemon.dir, 'through-overlay.raw')
        await execa('qemu-img', ['convert', '-O', 'raw', overlay, copy])
        assert.equal(await sha256File(copy), await sha256File(image))
      }
      if (JSON.parse(line).method === 'node.status') assert.equal(response.result.images.debian12.instances[0], 'vm1')
    }
    await assert.rejects(readFile(overlay), { code: 'ENOENT' }, 'destroy removed the overlay')
  } finally {
    await daemon.stop()
    await removeDir(daemon.dir)
  }
})
