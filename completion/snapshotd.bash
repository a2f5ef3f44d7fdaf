# bash completion for snapshotd; made by scripts/gen-docs.py from the parser.
_snapshotd() {
    local cur prev verb opts i=1
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    case "$prev" in
        --domain|-d)
            mapfile -t COMPREPLY < <(compgen -W "$(virsh -q list --all --name 2>/dev/null)" -- "$cur")
            return ;;
        --config|--out|--policy-dir|--state-dir|--directory)
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return ;;
        --config|--connect|--policy-dir|--state-dir|-c)
            return ;;
    esac
    # Options may come before the verb (snapshotd -c URI list ...): skip them.
    while [ "$i" -lt "$COMP_CWORD" ]; do
        case "${COMP_WORDS[i]}" in
            --config|--connect|--policy-dir|--state-dir|-c) i=$((i + 2)) ;;
            -*) i=$((i + 1)) ;;
            *) break ;;
        esac
    done
    if [ "$i" -ge "$COMP_CWORD" ]; then
        mapfile -t COMPREPLY < <(compgen -W 'check plan take prune run status schema list export import replicate migrate revert --config --connect --help --policy-dir --state-dir --version -c -h' -- "$cur")
        return
    fi
    verb="${COMP_WORDS[i]}"
    case "$verb" in
        check) opts='--config --connect --fleet --freshness --help --offline --policy-dir --state-dir -c -h' ;;
        plan) opts='--at --config --connect --description --directory --disk --disk-only --disks --domain --help --json --live --memory --name --no-atomic --policy --policy-dir --quiesce --reuse-external --state-dir -c -d -h -p' ;;
        take) opts='--config --connect --description --directory --disk --disk-only --disks --domain --help --json --live --memory --name --no-atomic --policy --policy-dir --quiesce --reuse-external --state-dir -c -d -h -p' ;;
        prune) opts='--config --connect --domain --dry-run --help --json --policy --policy-dir --state-dir -c -d -h -p' ;;
        run) opts='--config --connect --help --policy-dir --state-dir --workers -c -h' ;;
        status) opts='--config --fleet --help --json --policy-dir --state-dir -h' ;;
        schema) opts='--config --help --json -h' ;;
        list) opts='--config --connect --domain --group --help --json --policy-dir --state-dir --tree -c -d -g -h' ;;
        export) opts='--config --connect --domain --help --out --policy-dir --secure --state-dir -c -d -h' ;;
        import) opts='--config --connect --current --domain --dry-run --from-catalog --help --policy-dir --snapshot --state-dir -c -d -h' ;;
        replicate) opts='--config --connect --domain --help --policy-dir --remove-source-metadata --state-dir --to -c -d -h' ;;
        migrate) opts='--config --connect --domain --help --live --migrate-uri --persistent --policy-dir --state-dir --to --undefine-source --unsafe -c -d -h' ;;
        revert) opts='--config --connect --domain --group --help --paused --policy-dir --running --state-dir -c -d -g -h' ;;
        *) opts='' ;;
    esac
    mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
}
complete -F _snapshotd snapshotd
