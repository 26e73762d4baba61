// The systemd unit: `systemd-analyze verify` accepts it with no warning, sysusers creates the user, and its
// readiness command (vmthunderctl wait-ready, the unit's ExecStartPost) returns only once a real daemon's
// RPC and NBD sockets answer. SIGTERM, the unit's KillSignal, stops the daemon with exit 0.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFile, writeFile, mkdir, cp } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, ROOT, DAEMON_BIN, CTL_BIN } from '../helpers/daemon.js'

const UNIT = join(ROOT, 'packaging', 'systemd', 'vmthunderd.service')
const SYSUSERS = join(ROOT, 'packaging', 'systemd', 'vmthunderd.sysusers')

/** Directives of one section, key -> values, in order. */
function directives (text: string, section: string): Map<string, string[]> {
  const out = new Map<string, string[]>()
  let current = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    if (line.startsWith('[')) { current = line; continue }
    if (current !== `[${section}]`) continue
    const at = line.indexOf('=')
    out.set(line.slice(0, at), [...(out.get(line.slice(0, at)) ?? []), line.slice(at + 1)])
  }
  return out
}

test('systemd-analyze verify passes with no warning', { timeout: 60_000 }, async () => {
  const dir = await makeTempDir('vmt-unit')
  try {
    // verify checks that ExecStart's program exists on systemd's search path; nothing is installed there
    // in a checkout, so point the unit at this checkout's entry points.
    const text = (await readFile(UNIT, 'utf8'))
      .replace(/^ExecStart=vmthunderd /m, `ExecStart=${DAEMON_BIN} `)
      .replace(/^ExecStartPost=vmthunderctl /m, `ExecStartPost=${CTL_BIN} `)
    assert.notEqual(text, await readFile(UNIT, 'utf8'))
    const unit = join(dir, 'vmthunderd.service')
    await writeFile(unit, text)
    const result = await execa('systemd-analyze', ['verify', '--man=no', unit], { reject: false })
    assert.equal(result.exitCode, 0, result.stderr)
    // Unknown keys are only warnings (exit 0): none may name our unit.
    assert.deepEqual(result.stderr.split('\n').filter(l => l.includes('vmthunderd.service')), [])
  } finally {
    await removeDir(dir)
  }
})

test('the unit sandboxes the daemon and asks for what an operator expects', { timeout: 10_000 }, async () => {
  const service = directives(await readFile(UNIT, 'utf8'), 'Service')
  const one = (key: string): string | undefined => service.get(key)?.at(-1)
  assert.equal(one('StateDirectory'), 'vmthunder')
  assert.equal(one('RuntimeDirectory'), 'vmthunder')
  assert.equal(one('ProtectSystem'), 'strict')
  assert.equal(one('NoNewPrivileges'), 'yes')
  assert.equal(one('Restart'), 'on-failure')
  assert.equal(one('KillSignal'), 'SIGTERM')
  assert.equal(one('User'), 'vmthunder')
  assert.equal(one('CapabilityBoundingSet'), '')
  assert.match(one('ExecStartPost') ?? '', /^vmthunderctl --socket \/run\/vmthunder\/vmthunderd\.sock wait-ready/)
  assert.match(one('ExecStart') ?? '', /^vmthunderd --config \/etc\/vmthunder\/vmthunderd\.json$/)
  // The daemon's default paths are the unit's directories.
  const config = JSON.parse(await readFile(join(ROOT, 'packaging', 'vmthunderd.json'), 'utf8'))
  assert.equal(config.dataDir, '/var/lib/vmthunder')
  assert.equal(config.socket, '/run/vmthunder/vmthunderd.sock')
})

test('systemd-sysusers creates the vmthunder user and group', { timeout: 30_000 }, async () => {
  const root = await makeTempDir('vmt-sysusers')
  try {
    await mkdir(join(root, 'usr', 'lib', 'sysusers.d'), { recursive: true })
    await mkdir(join(root, 'etc'), { recursive: true })
    await cp(SYSUSERS, join(root, 'usr', 'lib', 'sysusers.d', 'vmthunderd.conf'))
    await execa('systemd-sysusers', [`--root=${root}`])
    const passwd = await readFile(join(root, 'etc', 'passwd'), 'utf8')
    assert.match(passwd, /^vmthunder:x:\d+:\d+:[^:]*:\/var\/lib\/vmthunder:\/usr\/sbin\/nologin$/m)
    assert.match(await readFile(join(root, 'etc', 'group'), 'utf8'), /^vmthunder:x:\d+:/m)
  } finally {
    await removeDir(root)
  }
})

test('wait-ready answers once the sockets do; SIGTERM stops the daemon with exit 0', { timeout: 90_000 }, async () => {
  const daemon = await startDaemon()
  try {
    const ready = await execa(process.execPath, [CTL_BIN, '--socket', daemon.socket, '--json', 'wait-ready', '--timeout-s', '30'])
    assert.deepEqual(JSON.parse(ready.stdout), { ready: true, socket: daemon.socket, nbdSocket: daemon.nbdSocket })
  } finally {
    assert.equal(await daemon.stop(), 0)
    await removeDir(daemon.dir)
  }
  assert.match(daemon.log(), /"message":"vmthunderd stopped"/)
})

test('wait-ready on a socket nobody serves gives up at its timeout with exit 3', { timeout: 60_000 }, async () => {
  const dir = await makeTempDir('vmt-ready')
  try {
    const result = await execa(process.execPath, [CTL_BIN, '--socket', join(dir, 'none.sock'), 'wait-ready', '--timeout-s', '0.5'], { reject: false })
    assert.equal(result.exitCode, 3)
    assert.match(result.stderr, /not ready in 500 ms/)
  } finally {
    await removeDir(dir)
  }
})
