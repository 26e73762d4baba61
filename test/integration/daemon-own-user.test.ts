// The daemon runs as its own unprivileged user: it owns its data dir and sockets, exports images it can read
// under the allowed directory, and cannot be made to export a file only root can read (the socket's users get
// no more than the daemon's user has). Needs root to switch users (setpriv); skipped otherwise. The user must
// reach the checkout: directories above it that it cannot search (CI clones into a 0700 mktemp dir, where this
// test used to skip itself) get search permission for others (o+x, not read) while the test runs, and their
// modes back after it.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { dirname, join } from 'node:path'
import { chmod, chown, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, DAEMON_BIN, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'

const NOBODY = 65534
const isRoot = process.getuid?.() === 0
const AS_NOBODY = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups']
/** Directories above the checkout opened for the test (see the top), with the modes they had. */
const opened: Array<{ path: string, mode: number }> = []
if (isRoot) {
  for (let d = dirname(DAEMON_BIN); ; d = dirname(d)) {
    const mode = (await stat(d)).mode & 0o7777
    if ((mode & 0o001) === 0) {
      opened.push({ path: d, mode })
      await chmod(d, mode | 0o001)
    }
    if (dirname(d) === d) break
  }
}
/** Can the unprivileged user reach the daemon's code at all (every directory above it searchable)? */
const checkoutReadable = isRoot && (await execa(AS_NOBODY[0], [...AS_NOBODY.slice(1), 'test', '-r', DAEMON_BIN], { reject: false, timeout: 10_000 })).exitCode === 0
const skipReason = !isRoot ? 'needs root to switch users' : !checkoutReadable ? `uid ${NOBODY} cannot read ${DAEMON_BIN} (a checkout inside a private directory)` : false
let dir: string
let daemon: TestDaemon | undefined

before(async () => {
  if (skipReason !== false) return
  dir = await makeTempDir('vmtuser')
  const images = join(dir, 'images')
  await mkdir(images)
  await makeImage(join(images, 'img.raw'), 2 * 1024 * 1024, [[0, 2 * 1024 * 1024]])
  await chown(dir, NOBODY, NOBODY)
  await chmod(dir, 0o755)
  await chmod(join(images, 'img.raw'), 0o644)
  // Root's file inside the allowed directory: the daemon's user cannot read it, so nobody can export it.
  await writeFile(join(images, 'root-only.raw'), Buffer.alloc(65536, 1), { mode: 0o600 })
  daemon = await startDaemon({ dir, allowImageDirs: [images], wrapper: AS_NOBODY })
})

after(async () => {
  await daemon?.stop()
  if (dir !== undefined) await removeDir(dir)
  for (const { path, mode } of opened.reverse()) await chmod(path, mode)
})

test('as an unprivileged user the daemon serves what it can read and refuses what it cannot', { skip: skipReason, timeout: 120_000 }, async () => {
  assert.ok(daemon !== undefined)
  const status = await readFile(`/proc/${daemon.process.pid}/status`, 'utf8')
  assert.match(status, new RegExp(`^Uid:\\s+${NOBODY}\\s+${NOBODY}`, 'm'))
  await daemon.call('image.register', { id: 'img', path: join(dir, 'images', 'img.raw') })
  const out = join(dir, 'copy.raw')
  await execa('nbdcopy', [daemon.nbdUri('img'), out], { timeout: 60_000 })
  assert.equal(await sha256File(out), await sha256File(join(dir, 'images', 'img.raw')))
  await assert.rejects(daemon.call('image.register', { id: 'secret', path: join(dir, 'images', 'root-only.raw') }), (e: any) => {
    assert.equal(e.code, 1004, e.message)
    assert.match(e.message, /EACCES|permission/i)
    return true
  })
  const vm = await daemon.call('instance.create', { name: 'vm1', image: 'img' })
  assert.ok(vm.path.startsWith(daemon.dataDir))
  assert.equal((await daemon.call('instance.destroy', { name: 'vm1' })).destroyed, true)
})
