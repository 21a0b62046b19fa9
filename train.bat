@echo off
rem train.bat - Windows entry point of the YOLOv8 defect-model retraining toolkit.
rem
rem   train.bat                       a menu: pick a stage, it runs, the menu comes back
rem   train.bat analyze  [options]    python training_analyzer.py [options]
rem   train.bat setup    [options]    python setup_training.py [options]
rem   train.bat prepare  [options]    python dataset_preparer.py [options]
rem   train.bat train    [options]    python train_yolov8.py [options]
rem   train.bat compare  [options]    python model_comparator.py [options]
rem   train.bat status   [options]    python training_pipeline.py --status [options]
rem   train.bat rollback [VERSION]    python training_pipeline.py --rollback [VERSION]
rem   train.bat pipeline [options]    python training_pipeline.py [options]
rem   train.bat [any other options]   python training_pipeline.py [options]
rem                                   e.g. train.bat --if-new-data --json  (nightly run)
rem   train.bat /?                    this help
rem
rem Options are passed on unchanged (quotes, spaces, key=value). The scripts are the ones
rem next to this file, whatever the current folder is.
rem
rem Python: the file named by the environment variable TRAIN_BAT_PYTHON when it is set
rem (for a special interpreter), else .venv\Scripts\python.exe next to this file, else the
rem "py -3" launcher, else "python" on PATH (py and python must really start Python 3: the
rem Microsoft Store alias that only opens the Store is skipped). A .bat or .cmd interpreter
rem (a pyenv-win shim) is run with CALL, which doubles carets in its arguments.
rem
rem Exit code: the Python script's own (0 success, 1 failure, 2 usage error); from the menu,
rem that of the last stage run. 9009 (the code cmd gives for a missing command) when no
rem Python 3 was found; 1 when a toolkit script is missing next to this file.

setlocal EnableExtensions DisableDelayedExpansion
set "TB_HOME=%~dp0"
set "TB_RC=0"

if "%~1"=="/?" goto usage
if /i "%~1"=="help" goto usage

call :find_python
if errorlevel 1 goto no_python

if "%~1"=="" goto menu

rem With arguments. %* (not %1..%9) keeps key=value pairs whole; a stage keyword is cut off
rem the front of it with *keyword= (case-insensitive, up to its first occurrence: the keyword).
set TB_ALL=%*
set "TB_FIXED="
if /i "%~1"=="analyze" goto args_analyze
if /i "%~1"=="setup" goto args_setup
if /i "%~1"=="prepare" goto args_prepare
if /i "%~1"=="train" goto args_train
if /i "%~1"=="compare" goto args_compare
if /i "%~1"=="status" goto args_status
if /i "%~1"=="rollback" goto args_rollback
if /i "%~1"=="pipeline" goto args_pipeline
set "TB_SCRIPT=training_pipeline.py"
set TB_ARGS=%*
goto args_run

:args_analyze
set "TB_SCRIPT=training_analyzer.py"
set TB_ARGS=%TB_ALL:*analyze=%
goto args_run
:args_setup
set "TB_SCRIPT=setup_training.py"
set TB_ARGS=%TB_ALL:*setup=%
goto args_run
:args_prepare
set "TB_SCRIPT=dataset_preparer.py"
set TB_ARGS=%TB_ALL:*prepare=%
goto args_run
:args_train
set "TB_SCRIPT=train_yolov8.py"
set TB_ARGS=%TB_ALL:*train=%
goto args_run
:args_compare
set "TB_SCRIPT=model_comparator.py"
set TB_ARGS=%TB_ALL:*compare=%
goto args_run
:args_status
set "TB_SCRIPT=training_pipeline.py"
set "TB_FIXED=--status"
set TB_ARGS=%TB_ALL:*status=%
goto args_run
:args_rollback
set "TB_SCRIPT=training_pipeline.py"
set "TB_FIXED=--rollback"
set TB_ARGS=%TB_ALL:*rollback=%
goto args_run
:args_pipeline
set "TB_SCRIPT=training_pipeline.py"
set TB_ARGS=%TB_ALL:*pipeline=%
goto args_run

:args_run
call :run_script
exit /b %ERRORLEVEL%


:menu
echo.
echo  YOLOv8 defect-model retraining toolkit  (folder: %TB_HOME%)
echo    1  analyze   the memory bank: weak classes, images to label next
echo    2  setup     the training workspace: folders, configs, base model
echo    3  prepare   import new labelled images into the dataset
echo    4  train     a candidate model
echo    5  compare   candidates with the production model
echo    6  pipeline  all of the above, then promote the winner
echo    7  status    production version, history, last runs
echo    8  rollback  restore an earlier production model
echo    0  quit      (also Q, or Enter on its own)
set "TB_CHOICE="
set /p "TB_CHOICE=Choice: "
rem End of input (a pipe or file that ran dry) reads as an empty line: quit, never loop.
if not defined TB_CHOICE goto menu_quit
rem Quotes typed by the user would break the comparisons below.
set "TB_CHOICE=%TB_CHOICE:"=%"
if not defined TB_CHOICE goto menu_quit
if /i "%TB_CHOICE%"=="q" goto menu_quit
if "%TB_CHOICE%"=="0" goto menu_quit
set "TB_FIXED="
if "%TB_CHOICE%"=="1" goto menu_analyze
if "%TB_CHOICE%"=="2" goto menu_setup
if "%TB_CHOICE%"=="3" goto menu_prepare
if "%TB_CHOICE%"=="4" goto menu_train
if "%TB_CHOICE%"=="5" goto menu_compare
if "%TB_CHOICE%"=="6" goto menu_pipeline
if "%TB_CHOICE%"=="7" goto menu_status
if "%TB_CHOICE%"=="8" goto menu_rollback
echo Unknown choice "%TB_CHOICE%": type a number from 0 to 8.
goto menu

:menu_analyze
set "TB_NAME=analyze"
set "TB_SCRIPT=training_analyzer.py"
goto menu_options
:menu_setup
set "TB_NAME=setup"
set "TB_SCRIPT=setup_training.py"
goto menu_options
:menu_prepare
set "TB_NAME=prepare"
set "TB_SCRIPT=dataset_preparer.py"
goto menu_options
:menu_train
set "TB_NAME=train"
set "TB_SCRIPT=train_yolov8.py"
goto menu_options
:menu_compare
set "TB_NAME=compare"
set "TB_SCRIPT=model_comparator.py"
goto menu_options
:menu_pipeline
set "TB_NAME=pipeline"
set "TB_SCRIPT=training_pipeline.py"
goto menu_options
:menu_status
set "TB_NAME=status"
set "TB_SCRIPT=training_pipeline.py"
set "TB_FIXED=--status"
set "TB_ARGS="
goto menu_run
:menu_rollback
set "TB_NAME=rollback"
set "TB_SCRIPT=training_pipeline.py"
set "TB_FIXED=--rollback"
set "TB_ARGS="
set /p "TB_ARGS=Version to restore (Enter for the previous one): "
goto menu_run

:menu_options
set "TB_ARGS="
set /p "TB_ARGS=Options for %TB_NAME% (Enter for none, --help to list them): "

:menu_run
echo.
call :run_script
set "TB_RC=%ERRORLEVEL%"
echo.
echo %TB_NAME% finished with exit code %TB_RC%.
goto menu

:menu_quit
exit /b %TB_RC%


rem ---- subroutines --------------------------------------------------------------------

:run_script
rem Runs TB_SCRIPT (next to this file) with TB_FIXED and TB_ARGS; returns its exit code.
if not exist "%TB_HOME%%TB_SCRIPT%" goto missing_script
%TB_CALL% "%TB_PY%" %TB_PY_ARGS% "%TB_HOME%%TB_SCRIPT%" %TB_FIXED% %TB_ARGS%
exit /b %ERRORLEVEL%

:missing_script
call :say_missing_script >&2
exit /b 1

:say_missing_script
echo train.bat: %TB_SCRIPT% was not found next to train.bat, in %TB_HOME%
echo   Keep train.bat in the toolkit folder with the Python scripts, or get a fresh copy.
exit /b 0

:find_python
rem Sets TB_PY (and TB_PY_ARGS, TB_CALL); errorlevel 1 when no Python 3 is found.
set "TB_PY="
set "TB_PY_ARGS="
set "TB_CALL="
if defined TRAIN_BAT_PYTHON goto python_from_variable
if exist "%TB_HOME%.venv\Scripts\python.exe" set "TB_PY=%TB_HOME%.venv\Scripts\python.exe"
if defined TB_PY exit /b 0
set "TB_FOUND="
for %%E in (py.exe py.bat py.cmd) do if not defined TB_FOUND set "TB_FOUND=%%~$PATH:E"
if not defined TB_FOUND goto python_on_path
rem py.exe is present even when it finds no Python 3: ask it to start one before using it.
call :call_for "%TB_FOUND%"
%TB_CALL% "%TB_FOUND%" -3 -c "import sys; sys.exit(sys.version_info[0] - 3)" >nul 2>&1
if not "%ERRORLEVEL%"=="0" goto python_on_path
set "TB_PY=%TB_FOUND%"
set "TB_PY_ARGS=-3"
goto python_found
:python_on_path
set "TB_FOUND="
for %%E in (python.exe python.bat python.cmd) do if not defined TB_FOUND set "TB_FOUND=%%~$PATH:E"
if not defined TB_FOUND exit /b 1
rem The Microsoft Store alias python.exe exits 9009 here instead of running Python.
call :call_for "%TB_FOUND%"
%TB_CALL% "%TB_FOUND%" -c "import sys; sys.exit(sys.version_info[0] - 3)" >nul 2>&1
if not "%ERRORLEVEL%"=="0" exit /b 1
set "TB_PY=%TB_FOUND%"
goto python_found
:python_from_variable
if not exist "%TRAIN_BAT_PYTHON%" goto bad_variable
set "TB_PY=%TRAIN_BAT_PYTHON%"
:python_found
call :call_for "%TB_PY%"
exit /b 0

:call_for
rem Sets TB_CALL to CALL for a .bat or .cmd interpreter (without it, control would never
rem come back from a batch file), to nothing for an .exe (CALL would re-expand its arguments).
set "TB_CALL="
if /i "%~x1"==".bat" set "TB_CALL=call"
if /i "%~x1"==".cmd" set "TB_CALL=call"
exit /b 0

:bad_variable
call :say_bad_variable >&2
exit /b 9009

:say_bad_variable
echo train.bat: TRAIN_BAT_PYTHON is set to "%TRAIN_BAT_PYTHON%", which does not exist.
echo   Set it to the full path of a python.exe, or clear it with: set TRAIN_BAT_PYTHON=
exit /b 0

:no_python
if defined TRAIN_BAT_PYTHON exit /b 9009
call :say_no_python >&2
rem Started without arguments (double-clicked): keep the window open to read the message.
if "%~1"=="" pause
exit /b 9009

:say_no_python
echo train.bat: Python 3 was not found.
echo   Looked for: %TB_HOME%.venv\Scripts\python.exe, the "py -3" launcher, "python" on PATH.
echo   Install Python 3.10 or newer (64-bit) from https://www.python.org/downloads/windows/
echo   with "Add python.exe to PATH" ticked, then in this folder run:
echo       py -3 -m venv .venv
echo       .venv\Scripts\python.exe -m pip install -r requirements.txt
echo   or set TRAIN_BAT_PYTHON to the full path of your python.exe.
exit /b 0

:usage
echo Usage: train.bat [analyze^|setup^|prepare^|train^|compare^|status^|rollback [VERSION]^|pipeline] [options]
echo.
echo   train.bat                      a menu of the stages
echo   train.bat analyze [options]    training_analyzer.py
echo   train.bat setup [options]      setup_training.py
echo   train.bat prepare [options]    dataset_preparer.py
echo   train.bat train [options]      train_yolov8.py
echo   train.bat compare [options]    model_comparator.py
echo   train.bat status               training_pipeline.py --status
echo   train.bat rollback [VERSION]   training_pipeline.py --rollback [VERSION]
echo   train.bat [options]            training_pipeline.py [options], e.g. --if-new-data --json
echo.
echo Add --help after a stage to list its options. Python: TRAIN_BAT_PYTHON, else
echo .venv\Scripts\python.exe here, else py -3, else python on PATH. Exit code: the script's;
echo 9009 when no Python 3 was found.
exit /b 0
