// A real VM boot through vmthunderd: the Debian guest (scripts/build-guest.sh) is registered, an instance
// overlay is created over the daemon's NBD export, and QEMU (TCG) boots from the overlay until the guest's
// own marker appears on its console and it powers off.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { buildGuest, bootGuest, type GuestPaths } from '../helpers/vm.js'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { sha256File } from '../helpers/images.js'

const BOOT_TIMEOUT_MS = 300_000
let guest: GuestPaths
let dir: string
let daemon: TestDaemon | undefined

before(async () => {
  guest = await buildGuest({ timeoutMs: 15 * 60_000 })
  dir = await makeTempDir('vmt-boot')
}, { timeout: 16 * 60_000 })

after(async () => {
  await daemon?.stop()
  if (dir !== undefined) await removeDir(dir)
})

test('a VM boots from an instance snapshot served by vmthunderd', { timeout: BOOT_TIMEOUT_MS + 120_000 }, async () => {
  const rawShaBefore = await sha256File(guest.raw)
  daemon = await startDaemon({ dir, allowImageDirs: [dirname(guest.raw)] })
  await daemon.call('image.register', { id: 'debian', path: guest.raw })
  const vm = await daemon.call('instance.create', { name: 'vm-boot', image: 'debian' })
  const before = (await daemon.call('node.status')).images.debian.cache
  const r = await bootGuest({ drive: vm.path, format: 'qcow2', kernel: guest.kernel, initrd: guest.initrd, timeoutMs: BOOT_TIMEOUT_MS })
  assert.equal(r.markerSeen, true, `no boot marker; console tail:\n${r.consoleTail}`)
  assert.equal(r.exitCode, 0, 'the guest powered itself off')
  const after = (await daemon.call('node.status')).images.debian.cache
  // The guest's reads went through the daemon's NBD export, its writes into the instance overlay only.
  assert.ok(after.readBytes - before.readBytes > 5 * 1024 * 1024, `only ${after.readBytes - before.readBytes} bytes read through NBD`)
  assert.ok((await stat(vm.path)).size > 256 * 1024, 'the overlay received the guest\'s writes')
  assert.equal(await sha256File(guest.raw), rawShaBefore, 'the image file was not written')
  await daemon.call('instance.destroy', { name: 'vm-boot' })
})
