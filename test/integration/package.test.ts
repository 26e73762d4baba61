// The packed tarball, installed as an operator would (npm install -g --prefix), with no source tree and no
// TypeScript runtime: register -> instance create through its vmthunderctl, then real NBD clients read.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { access } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, AGENT_NODE_FLAGS, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { packAndInstall, BUILD_ONLY_PACKAGES, type InstalledPackage } from '../../scripts/lib/package-install.js'

const MiB = 1024 * 1024
let dir: string
let pkg: InstalledPackage
let daemon: TestDaemon | undefined

before(async () => {
  dir = await makeTempDir('vmt-pkg')
  pkg = await packAndInstall(dir, { signal: AbortSignal.timeout(900_000) })
}, { timeout: 900_000 })

after(async () => {
  await daemon?.stop()
  if (dir !== undefined) await removeDir(dir)
})

test('the tarball holds compiled JavaScript only, and the install has no TypeScript runtime', { timeout: 30_000 }, async () => {
  assert.ok(pkg.files.includes('dist/vmthunderd.cjs'), pkg.files.join('\n'))
  assert.ok(pkg.files.includes('dist/vmthunderctl.cjs'))
  // V8 code caches are made on the host, for its node (postinstall), never packed.
  assert.deepEqual(pkg.files.filter(f => f.endsWith('.v8cache')), [])
  assert.deepEqual(pkg.files.filter(f => f.endsWith('.ts') || f.startsWith('src/') || f.startsWith('test/') || f.startsWith('dist/src/')), [])
  for (const name of BUILD_ONLY_PACKAGES) {
    await assert.rejects(access(join(pkg.packageDir, 'node_modules', name)), { code: 'ENOENT' })
  }
  const help = await execa(pkg.vmthunderd, ['--help'])
  assert.match(help.stdout, /^usage: vmthunderd/)
})

test('the install wrote the bundles\' V8 code caches, and this node accepts them under the flags each command runs with', { timeout: 60_000 }, async () => {
  const loader = join(pkg.packageDir, 'bin', 'load-bundle.js')
  // V8 takes a cache only under the command-line flags it was written with: the daemon's are AGENT_NODE_FLAGS.
  for (const [name, flags] of [['vmthunderd', AGENT_NODE_FLAGS], ['vmthunderctl', []]] as const) {
    const bundle = join(pkg.packageDir, 'dist', `${name}.cjs`)
    const loaded = await execa(process.execPath, [...flags, '--input-type=module', '-e',
      `import { loadBundle } from ${JSON.stringify(loader)}; process.stdout.write(loadBundle(${JSON.stringify(bundle)}).cache)`])
    assert.equal(loaded.stdout, 'used', name)
  }
})

test('installed vmthunderd + vmthunderctl: register, instance create, nbdinfo and nbdcopy read it back', { timeout: 120_000 }, async () => {
  const image = join(dir, 'base.raw')
  await makeImage(image, 20 * MiB + 4096, [[0, 2 * MiB], [11 * MiB + 5, 3 * MiB]])
  const imageSha = await sha256File(image)
  daemon = await startDaemon({ dir, bin: pkg.vmthunderd, allowImageDirs: [dir] })
  const ctl = async (...args: string[]): Promise<string> => (await execa(pkg.vmthunderctl, ['--socket', daemon!.socket, ...args])).stdout
  const registered = JSON.parse(await ctl('--json', 'image', 'register', 'base', image))
  assert.equal(registered.sizeBytes, 20 * MiB + 4096)
  const overlay = (await ctl('instance', 'create', 'vm1', '--image', 'base')).trim()
  const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', overlay])).stdout)
  assert.equal(info['backing-filename'], daemon.nbdUri('base'))
  const nbd = JSON.parse((await execa('nbdinfo', ['--json', daemon.nbdUri('base')])).stdout)
  assert.equal(nbd.exports[0]['export-size'], 20 * MiB + 4096)
  const copy = join(dir, 'copy.raw')
  await execa('nbdcopy', [daemon.nbdUri('base'), copy])
  assert.equal(await sha256File(copy), imageSha)
  // The overlay reads through the NBD export too: its content is the image's.
  const fromOverlay = join(dir, 'overlay.raw')
  await execa('qemu-img', ['convert', '-O', 'raw', overlay, fromOverlay])
  assert.equal(await sha256File(fromOverlay), imageSha)
  assert.equal(await daemon.stop(), 0)
  daemon = undefined
})
