// The agent's V8 flags (bin/v8-flags.js) take effect when set at run time on this node: a function compiled
// after `started` runs Sparkplug code from its first calls, and VMTHUNDER_V8_FLAGS='' leaves V8's defaults.
// Checked in a child node (flags are process-wide), with V8's own test intrinsic.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const FLAGS_MODULE = fileURLToPath(new URL('../../bin/v8-flags.js', import.meta.url))

/** Runs the hooks in a fresh node (env given), then reports whether a new function is on Sparkplug after two calls. */
function sparkplugAfterHooks (env: Record<string, string>): string {
  const script = [
    `const { agentV8Hooks } = await import(${JSON.stringify(FLAGS_MODULE)})`,
    'const hooks = agentV8Hooks()',
    'hooks.loaded(); hooks.started()',
    "const f = new Function('x', 'return x + 1')",
    'f(1); f(2)',
    "console.log(String(eval('%ActiveTierIsSparkplug(f)')))"
  ].join('\n')
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env }
  if (env.VMTHUNDER_V8_FLAGS === undefined) delete childEnv.VMTHUNDER_V8_FLAGS
  return execFileSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { env: childEnv, timeout: 20_000 }).toString().trim()
}

test('the agent flags turn Sparkplug on for code compiled once started; VMTHUNDER_V8_FLAGS empty keeps V8 defaults', { timeout: 60_000 }, () => {
  assert.equal(sparkplugAfterHooks({}), 'true')
  assert.equal(sparkplugAfterHooks({ VMTHUNDER_V8_FLAGS: '' }), 'false')
})

test('bin/vmthunderd.js runs node with AGENT_ENV and AGENT_NODE_FLAGS (its first line), and this node takes them', { timeout: 30_000 }, async () => {
  const { readFile } = await import('node:fs/promises')
  const { AGENT_NODE_FLAGS, AGENT_ENV } = await import(FLAGS_MODULE)
  const first = (await readFile(fileURLToPath(new URL('../../bin/vmthunderd.js', import.meta.url)), 'utf8')).split('\n')[0]
  const m = /^#!\/usr\/bin\/env -S((?: [A-Z_]+=\S+)*) node((?: \S+)*)$/.exec(first)
  assert.ok(m !== null, first)
  assert.deepEqual(Object.fromEntries(m[1].split(' ').filter(f => f !== '').map(a => [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)])), { ...AGENT_ENV })
  assert.deepEqual(m[2].split(' ').filter(f => f !== ''), AGENT_NODE_FLAGS)
  assert.ok(AGENT_NODE_FLAGS.length > 0)
  // A flag this node does not know would stop the daemon before it ran a line.
  assert.equal(execFileSync(process.execPath, [...AGENT_NODE_FLAGS, '-e', 'process.stdout.write("ok")'], { timeout: 20_000 }).toString(), 'ok')
})

test('AGENT_ENV: this glibc takes the malloc tunable; agentEnv keeps tunables already set', { timeout: 30_000 }, async (t) => {
  const { AGENT_ENV, agentEnv } = await import(FLAGS_MODULE)
  assert.equal(agentEnv({}).GLIBC_TUNABLES, AGENT_ENV.GLIBC_TUNABLES)
  assert.equal(agentEnv({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }).GLIBC_TUNABLES, `glibc.malloc.arena_max=2:${AGENT_ENV.GLIBC_TUNABLES as string}`)
  assert.equal(agentEnv({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }).GLIBC_TUNABLES, 'glibc.malloc.hugetlb=0')
  // The dynamic loader lists the tunables as this process would have them: a name glibc does not know would
  // be ignored without a word.
  const loader = '/lib64/ld-linux-x86-64.so.2'
  const { existsSync } = await import('node:fs')
  if (process.arch !== 'x64' || !existsSync(loader)) { t.skip(`no ${loader}`); return }
  const listed = execFileSync(loader, ['--list-tunables'], { env: { ...process.env, GLIBC_TUNABLES: AGENT_ENV.GLIBC_TUNABLES }, timeout: 20_000 }).toString()
  assert.match(listed, /^glibc\.malloc\.hugetlb: 0x1 /m)
})
