# saltpeter.wrapper: sp-wrapper on a minion, which runs the jobs the saltpeter daemon fires.
# Apply to every minion that runs jobs:  salt '*' state.apply saltpeter.wrapper
# Put the binary at files/sp-wrapper first (see files/README.md). A second apply changes nothing.
{%- from tpldir ~ "/map.jinja" import saltpeter with context %}
{%- set wrapper = saltpeter.wrapper %}

saltpeter-wrapper:
  file.managed:
    - name: {{ wrapper.path }}
    - source: {{ wrapper.source }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

# The wrapper's own log (<logdir>/<job>.log; SP_WRAPPER_LOGDIR, the job's wrapper_logdir).
saltpeter-wrapper-logdir:
  file.directory:
    - name: {{ wrapper.logdir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

# Job locks and the output spool while the daemon is away (SP_SPOOL_DIR; on /run the wrapper
# makes it again after a reboot).
saltpeter-wrapper-spooldir:
  file.directory:
    - name: {{ wrapper.spooldir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

# Proves the new binary runs here (architecture, libc); only when it changed.
saltpeter-wrapper-version:
  cmd.run:
    - name: {{ wrapper.path }} --version
    - onchanges:
      - file: saltpeter-wrapper
