// Boots the small Debian guest (scripts/build-guest.sh) under QEMU TCG: from a qcow2 overlay on the raw
// image, and from a qcow2 overlay whose backing file is an NBD export served by nbdkit over a unix socket,
// the path vmthunderd's hosts use. Each boot takes about 10-60 s under TCG.
import { test, before, after, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildGuest, bootGuest, createOverlay, startNbdkitFile, type GuestPaths } from '../helpers/vm.js'

const BOOT_TIMEOUT_MS = 240_000
let guest: GuestPaths
let dir: string

before(async () => {
  guest = await buildGuest({ timeoutMs: 15 * 60_000 })
  dir = await mkdtemp(join(tmpdir(), 'vmt-guest-'))
}, { timeout: 16 * 60_000 })

after(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

test('guest boots to multi-user from a qcow2 overlay on the raw image', { timeout: BOOT_TIMEOUT_MS + 30_000 }, async (t: TestContext) => {
  const rawBefore = await stat(guest.raw)
  const overlay = join(dir, 'file-overlay.qcow2')
  await createOverlay({ path: overlay, backing: guest.raw, backingFormat: 'raw' })
  const r = await bootGuest({ drive: overlay, format: 'qcow2', kernel: guest.kernel, initrd: guest.initrd, timeoutMs: BOOT_TIMEOUT_MS })
  assert.equal(r.markerSeen, true, `no boot marker; console tail:\n${r.consoleTail}`)
  assert.equal(r.exitCode, 0, 'the guest powered itself off')
  t.diagnostic(`marker after ${r.elapsedMs} ms`)
  // The boot wrote (journal, fsck state); the writes went to the overlay, not to the shared image.
  assert.ok((await stat(overlay)).size > 256 * 1024, 'the overlay received the guest\'s writes')
  assert.equal((await stat(guest.raw)).mtimeMs, rawBefore.mtimeMs, 'the raw image was not written')
})

test('guest boots from a qcow2 overlay backed by an nbdkit NBD export on a unix socket', { timeout: BOOT_TIMEOUT_MS + 30_000 }, async (t: TestContext) => {
  const server = await startNbdkitFile({ file: guest.raw, socket: join(dir, 'nbd.sock'), statsFile: join(dir, 'stats.txt') })
  let stats: string | undefined
  try {
    const overlay = join(dir, 'nbd-overlay.qcow2')
    await createOverlay({ path: overlay, backing: server.uri('guest'), backingFormat: 'raw' })
    const r = await bootGuest({ drive: overlay, format: 'qcow2', kernel: guest.kernel, initrd: guest.initrd, timeoutMs: BOOT_TIMEOUT_MS })
    assert.equal(r.markerSeen, true, `no boot marker; console tail:\n${r.consoleTail}`)
    assert.equal(r.exitCode, 0, 'the guest powered itself off')
    t.diagnostic(`marker after ${r.elapsedMs} ms`)
  } finally {
    stats = await server.stop()
  }
  // The guest's reads really went over NBD: the stats filter counts several MiB read.
  const m = /^read: (\d+) ops, [\d.]+ s, ([\d.]+) (KiB|MiB|GiB)/m.exec(stats ?? '')
  assert.ok(m !== null, `nbdkit stats:\n${stats}`)
  const mib = Number(m[2]) * ({ KiB: 1 / 1024, MiB: 1, GiB: 1024 } as Record<string, number>)[m[3]]
  t.diagnostic(`${m[1]} reads, ${mib.toFixed(1)} MiB over NBD`)
  assert.ok(mib > 5, `only ${mib} MiB read over NBD`)
})

test('bootGuest kills QEMU at the timeout and reports no marker', { timeout: 60_000 }, async () => {
  const overlay = join(dir, 'timeout-overlay.qcow2')
  await createOverlay({ path: overlay, backing: guest.raw, backingFormat: 'raw' })
  const lines: string[] = []
  const r = await bootGuest({ drive: overlay, format: 'qcow2', kernel: guest.kernel, initrd: guest.initrd, timeoutMs: 1500, log: (l) => { lines.push(l) } })
  assert.equal(r.markerSeen, false)
  assert.equal(r.timedOut, true)
  assert.equal(r.exitCode, null, 'QEMU was killed, not exited')
  assert.ok(r.elapsedMs >= 1500)
})

test('bootGuest rejects with the abort reason and kills QEMU when aborted', { timeout: 60_000 }, async () => {
  const overlay = join(dir, 'abort-overlay.qcow2')
  await createOverlay({ path: overlay, backing: guest.raw, backingFormat: 'raw' })
  const ac = new AbortController()
  const p = bootGuest({
    drive: overlay, format: 'qcow2', kernel: guest.kernel, initrd: guest.initrd, timeoutMs: BOOT_TIMEOUT_MS, signal: ac.signal,
    // Abort as soon as the firmware has printed something: QEMU is running by then.
    log: () => { ac.abort(new Error('test abort')) }
  })
  await assert.rejects(p, /test abort/)
})
