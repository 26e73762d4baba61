// Regression tests from probing the daemon from outside, with small counts (`npm run fuzz` runs big ones):
// fuzzed JSON-RPC and NBD input lose nothing and crash nothing, connect/close cycles leak no fds, and SIGTERM
// right after the fuzz stops the daemon cleanly (it used to take 20 s and be killed by its own watchdog).

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { rpcFuzz, nbdFuzz, nbdCycles, instanceCycles, connectionFlood } from '../fuzz/daemon-fuzz.js'

const seed = Number(process.env.FUZZ_SEED ?? (Date.now() >>> 0))
let dir: string
let daemon: TestDaemon
let imagePath: string

before(async () => {
  dir = await makeTempDir('vmtdfz')
  imagePath = join(dir, 'img.raw')
  await makeImage(imagePath, 3 * 1024 * 1024 + 4321, [[0, 1024 * 1024], [2 * 1024 * 1024, 1024 * 1024 + 4321]])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({ rpc: { maxConnections: 16 }, p2p: { manifestTimeoutMs: 5000 }, prefetch: { enabled: false } }))
  daemon = await startDaemon({ dir, args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir] })
  await daemon.call('image.register', { id: 'img', path: imagePath })
})

after(async () => {
  await daemon?.kill()
  await removeDir(dir)
})

test(`fuzzed JSON-RPC: every request answered, no internal error, daemon up (seed ${seed})`, { timeout: 180_000 }, async () => {
  const report = await rpcFuzz(daemon, { requests: 400, seed, connections: 8, imagePath })
  assert.equal(report.daemonAlive, true)
  assert.equal(report.unanswered, 0, JSON.stringify(report))
  assert.equal(report.internalErrors, 0, JSON.stringify(report))
  assert.ok(report.answered > 0)
  const images = await daemon.call('image.list')
  assert.ok(images.some((i: any) => i.id === 'img'))
})

test(`fuzzed NBD connections: the image still reads back exactly (seed ${seed})`, { timeout: 180_000 }, async () => {
  const report = await nbdFuzz(daemon, { cases: 60, seed, imageId: 'img', expected: await readFile(imagePath) })
  assert.equal(report.daemonAlive, true)
  assert.equal(report.wrongBytes, 0)
})

test('NBD and instance create/destroy cycles leave no fds behind', { timeout: 180_000 }, async () => {
  const nbd = await nbdCycles(daemon, { cycles: 100, imageId: 'img' })
  assert.ok(nbd.fdsAfter <= nbd.fdsBefore, `NBD cycles: ${nbd.fdsBefore} fds before, ${nbd.fdsAfter} after`)
  // Instances of the fuzz may remain; cycles use their own names.
  const inst = await instanceCycles(daemon, { cycles: 10, imageId: 'img' })
  assert.ok(inst.fdsAfter <= inst.fdsBefore, `instance cycles: ${inst.fdsBefore} fds before, ${inst.fdsAfter} after`)
})

test('a flood over the connection limit: the surplus is refused with 1091 and every socket is released', { timeout: 180_000 }, async () => {
  const report = await connectionFlood(daemon, { connections: 24 })
  assert.equal(report.answered + report.refused, 24, JSON.stringify(report))
  assert.ok(report.refused > 0, JSON.stringify(report))
  assert.ok(report.fdsAfter <= report.fdsBefore, JSON.stringify(report))
})

test('SIGTERM after the fuzz: the daemon stops cleanly, exit code 0', { timeout: 60_000 }, async () => {
  const code = await daemon.stop()
  assert.equal(code, 0, daemon.log().slice(-3000))
  assert.match(daemon.log(), /"message":"vmthunderd stopped"/)
  assert.doesNotMatch(daemon.log(), /stop took too long/)
})
