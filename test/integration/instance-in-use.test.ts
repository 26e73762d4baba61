// instance.destroy while a VM holds the overlay open is refused (1013) unless --force. A real QEMU block layer
// holds it: qemu-io opens the qcow2 overlay (and through it the daemon's NBD export) and takes the same OFD
// locks a qemu-system VM takes.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { access } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, CTL_BIN, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'
import { waitFor, waitForEvent } from '../helpers/wait.js'

let dir: string
let daemon: TestDaemon
const holders: ChildProcess[] = []

before(async () => {
  dir = await makeTempDir('vmtinuse')
  await makeImage(join(dir, 'img.raw'), 8 * 1024 * 1024, [[0, 2 * 1024 * 1024]])
  daemon = await startDaemon({ dir, allowImageDirs: [dir] })
  await daemon.call('image.register', { id: 'img', path: join(dir, 'img.raw') })
})

after(async () => {
  for (const h of holders) if (h.exitCode === null && h.signalCode === null) h.kill('SIGKILL')
  await daemon?.stop()
  await removeDir(dir)
})

/** qemu-io with the overlay open; resolves once it prompts (the image, and so its locks, are open). */
async function holdOverlay (path: string): Promise<ChildProcess> {
  const child = spawn('qemu-io', ['-f', 'qcow2', path], { stdio: ['pipe', 'pipe', 'pipe'] })
  holders.push(child)
  let out = ''
  child.stdout!.on('data', (b: Buffer) => { out += b.toString() })
  child.stderr!.on('data', (b: Buffer) => { out += b.toString() })
  await waitFor('qemu-io to open the overlay', () => {
    if (child.exitCode !== null) throw new Error(`qemu-io exited: ${out}`)
    return out.includes('qemu-io>') ? true : undefined
  }, { timeoutMs: 30_000, wakeOn: [{ emitter: child.stdout!, event: 'data' }, { emitter: child, event: 'exit' }] })
  return child
}

async function ctl (...args: string[]): Promise<{ exitCode: number, stdout: string, stderr: string }> {
  const r = await execa(process.execPath, [CTL_BIN, '--socket', daemon.socket, ...args], { reject: false, timeout: 60_000 })
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}

test('destroy is refused while qemu holds the overlay, and --force destroys it', { timeout: 60_000 }, async () => {
  const vm = await daemon.call('instance.create', { name: 'vm1', image: 'img' })
  const holder = await holdOverlay(vm.path)
  await assert.rejects(daemon.call('instance.destroy', { name: 'vm1' }), (e: any) => {
    assert.equal(e.code, 1013, e.message)
    assert.equal(e.data?.name, 'InstanceInUseError')
    assert.match(e.message, /--force/)
    return true
  })
  assert.deepEqual((await daemon.call('instance.list')).map((i: any) => i.name), ['vm1'])
  await access(vm.path)
  const refused = await ctl('instance', 'destroy', 'vm1')
  assert.equal(refused.exitCode, 1, refused.stderr)
  assert.match(refused.stderr, /in use/)
  const forced = await ctl('instance', 'destroy', 'vm1', '--force')
  assert.equal(forced.exitCode, 0, forced.stderr)
  assert.deepEqual(await daemon.call('instance.list'), [])
  await assert.rejects(access(vm.path), { code: 'ENOENT' })
  holder.kill('SIGKILL')
})

test('once the VM has closed the overlay, destroy goes through without --force', { timeout: 60_000 }, async () => {
  const vm = await daemon.call('instance.create', { name: 'vm2', image: 'img' })
  const holder = await holdOverlay(vm.path)
  await assert.rejects(daemon.call('instance.destroy', { name: 'vm2' }), { code: 1013 })
  const exited = waitForEvent('qemu-io to exit', holder, 'exit', () => true, { timeoutMs: 30_000 })
  holder.stdin!.end('quit\n')
  await exited
  const destroyed = await daemon.call('instance.destroy', { name: 'vm2' })
  assert.equal(destroyed.destroyed, true)
  await assert.rejects(access(vm.path), { code: 'ENOENT' })
})
